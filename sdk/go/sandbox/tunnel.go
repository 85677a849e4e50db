// The port-forward tunnel of ModePortForward: a client-go port-forward (SPDY) through the API
// server to the Pod behind the router's Service, started on first use and again when it died.

package sandbox

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

var (
	gvrService = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	gvrPod     = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

type tunnel struct {
	c *Client

	mu    sync.Mutex
	local int
	stop  chan struct{}
	dead  chan struct{}
}

func newTunnel(c *Client) *tunnel { return &tunnel{c: c} }

func (t *tunnel) describe() string {
	return fmt.Sprintf("port-forward to the router Service %s/%s", t.c.opts.RouterNamespace, t.c.opts.RouterService)
}

// port returns the local port of a live tunnel, starting one when needed.
func (t *tunnel) port(ctx context.Context) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.local != 0 {
		select {
		case <-t.dead:
			t.local = 0
		default:
			return t.local, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, t.c.opts.PortForwardReadyTimeout)
	defer cancel()
	port, err := t.start(ctx)
	if err != nil {
		return 0, err
	}
	t.local = port
	return port, nil
}

func (t *tunnel) podBehindService(ctx context.Context) (string, int, error) {
	ns, name := t.c.opts.RouterNamespace, t.c.opts.RouterService
	svc, err := t.c.kube.dyn.Resource(gvrService).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		e := t.c.kube.apiErr(err, "reading the router Service "+ns+"/"+name)
		return "", 0, &Error{Kind: KindPortForward, Err: e, Message: e.Error() +
			"; is the sandbox router deployed? (Options.RouterNamespace and RouterService name it)"}
	}
	sel, _, _ := unstructuredMap(svc.Object, "spec", "selector")
	targetPort := defaultRouterServicePort
	if ports, ok := svc.Object["spec"].(map[string]any)["ports"].([]any); ok && len(ports) > 0 {
		if p, ok := ports[0].(map[string]any); ok {
			if tp, ok := p["targetPort"].(int64); ok && tp > 0 {
				targetPort = int(tp)
			} else if pp, ok := p["port"].(int64); ok && pp > 0 {
				targetPort = int(pp)
			}
		}
	}
	parts := []string{}
	for k, v := range sel {
		parts = append(parts, fmt.Sprintf("%s=%v", k, v))
	}
	pods, err := t.c.kube.dyn.Resource(gvrPod).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: strings.Join(parts, ",")})
	if err != nil {
		e := t.c.kube.apiErr(err, "listing the router's Pods in "+ns)
		return "", 0, &Error{Kind: KindPortForward, Err: e, Message: e.Error()}
	}
	for _, p := range pods.Items {
		if phase, _, _ := unstructuredString(p.Object, "status", "phase"); phase == "Running" {
			return p.GetName(), targetPort, nil
		}
	}
	return "", 0, newErr(KindPortForward, nil, "the router Service %s/%s selects no Running Pod; is the router running?", ns, name)
}

func (t *tunnel) start(ctx context.Context) (int, error) {
	pod, port, err := t.podBehindService(ctx)
	if err != nil {
		return 0, err
	}
	cfg := t.c.rest
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return 0, newErr(KindPortForward, err, "%s: %v", t.describe(), err)
	}
	u, err := url.Parse(strings.TrimRight(cfg.Host, "/") + cfg.APIPath)
	if err != nil {
		return 0, newErr(KindConfig, err, "bad API server URL %q: %v", cfg.Host, err)
	}
	u.Path = strings.TrimRight(u.Path, "/") + fmt.Sprintf("/api/v1/namespaces/%s/pods/%s/portforward", t.c.opts.RouterNamespace, pod)
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stop, ready, dead := make(chan struct{}), make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return 0, newErr(KindPortForward, err, "%s: %v", t.describe(), err)
	}
	var ferr error
	go func() {
		ferr = fw.ForwardPorts()
		close(dead)
	}()
	select {
	case <-ready:
	case <-dead:
		return 0, newErr(KindPortForward, ferr, "%s (Pod %s) failed: %v; check that the kubeconfig's user may create pods/portforward", t.describe(), pod, ferr)
	case <-ctx.Done():
		close(stop)
		return 0, newErr(KindPortForward, ctx.Err(), "%s (Pod %s) was not ready within %s", t.describe(), pod, t.c.opts.PortForwardReadyTimeout)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		return 0, newErr(KindPortForward, err, "%s: no local port: %v", t.describe(), err)
	}
	t.stop, t.dead = stop, dead
	return int(ports[0].Local), nil
}

// reset forgets a tunnel that died, so that the next request starts another.
func (t *tunnel) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.local == 0 {
		return
	}
	select {
	case <-t.dead:
		t.local = 0
	default:
	}
}

func (t *tunnel) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stop != nil {
		close(t.stop)
		t.stop = nil
		deadline := time.After(2 * time.Second)
		select {
		case <-t.dead:
		case <-deadline:
		}
	}
	t.local = 0
}

func unstructuredMap(obj map[string]any, fields ...string) (map[string]any, bool, error) {
	cur := any(obj)
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		cur = m[f]
	}
	m, ok := cur.(map[string]any)
	return m, ok, nil
}

func unstructuredString(obj map[string]any, fields ...string) (string, bool, error) {
	cur := any(obj)
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = m[f]
	}
	s, ok := cur.(string)
	return s, ok, nil
}
