// Client: claims sandboxes from warm pools (SandboxClaim create, wait for Ready, delete),
// attaches to existing claims, and holds what the sandboxes share: the API server's client,
// the HTTP client of the data plane, the router token and the port-forward tunnel.

package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// Client claims and manages sandboxes. It is safe for concurrent use.
type Client struct {
	opts      Options
	rest      *rest.Config
	kube      *kube
	mode      Mode
	routerURL string
	token     *tokenSource
	hint      string
	desc      string
	http      *http.Client
	tunnel    *tunnel

	mu        sync.Mutex
	sandboxes map[string]*Sandbox // "namespace/claim" of the claims this client created
}

var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// NewClient resolves opts (see Options) and returns a Client. It does not contact the
// servers yet: the first call that needs them reports what is missing.
func NewClient(_ context.Context, opts Options) (*Client, error) {
	opts.defaults()
	r, err := resolve(&opts)
	if err != nil {
		return nil, err
	}
	cfg := rest.CopyConfig(r.rest)
	cfg.UserAgent = userAgent
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 100, 200
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, newErr(KindConfig, err, "cannot make a Kubernetes client for %s: %v", r.description, err)
	}
	transport := opts.HTTPTransport
	if transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 32
		t.Proxy = nil // loopback routers and pod IPs are never reached through a proxy
		transport = t
	}
	c := &Client{
		opts: opts, rest: cfg, mode: r.mode, routerURL: r.routerURL, token: r.token, hint: r.hint,
		desc: r.description, http: &http.Client{Transport: transport},
		kube:      &kube{dyn: dyn, server: cfg.Host, hint: r.hint},
		sandboxes: map[string]*Sandbox{},
	}
	if c.mode == ModePortForward {
		c.tunnel = newTunnel(c)
	}
	return c, nil
}

// Mode is how this client reaches sandboxes.
func (c *Client) Mode() Mode { return c.mode }

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// CreateSandbox claims a sandbox from the warm pool warmPool in namespace ("" for the
// client's) and waits until it is Ready. A claim under a generated name that fails or times
// out is deleted; the error says why.
func (c *Client) CreateSandbox(ctx context.Context, warmPool, namespace string, opts ...ClaimOptions) (*Sandbox, error) {
	var o ClaimOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if namespace == "" {
		namespace = c.opts.Namespace
	}
	if warmPool == "" || !dnsSubdomain.MatchString(warmPool) {
		return nil, newErr(KindConfig, nil, "warm pool name %q is not a valid name (a DNS-1123 subdomain)", warmPool)
	}
	generated := o.ClaimName == ""
	name := o.ClaimName
	if generated {
		name = "sandbox-claim-" + randomSuffix()
	} else if !dnsSubdomain.MatchString(name) {
		return nil, newErr(KindConfig, nil, "claim name %q is not a valid name (a DNS-1123 subdomain: lowercase letters, digits, '-' and '.')", name)
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = c.opts.SandboxReadyTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	created, err := c.kube.createClaim(wctx, namespace, name, warmPool, o)
	if err != nil {
		return nil, err
	}
	ready, err := c.kube.waitClaim(wctx, created, warmPool, timeout)
	if err != nil {
		if generated {
			dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_ = c.kube.deleteClaim(dctx, namespace, name)
			dcancel()
			if e, ok := err.(*Error); ok && e.Kind == KindTimeout {
				e.Message += "; the claim was deleted"
			}
		}
		return nil, err
	}
	sbName, ip := claimSandbox(ready)
	sb := &Sandbox{client: c, claimName: name, name: sbName, namespace: namespace, podIP: ip, active: true}
	c.mu.Lock()
	c.sandboxes[namespace+"/"+name] = sb
	c.mu.Unlock()
	return sb, nil
}

// GetSandbox attaches to an existing claim's sandbox (e.g. one made by another process).
func (c *Client) GetSandbox(ctx context.Context, claimName, namespace string) (*Sandbox, error) {
	if namespace == "" {
		namespace = c.opts.Namespace
	}
	obj, err := c.kube.dyn.Resource(gvrClaim).Namespace(namespace).Get(ctx, claimName, getOpts)
	if err != nil {
		if e := c.kube.apiErr(err, fmt.Sprintf("reading claim %s/%s", namespace, claimName)); KindOf(e) == KindNotFound {
			return nil, newErr(KindNotFound, err, "claim %s/%s does not exist; list claims with `kubectl get sandboxclaims -n %s`", namespace, claimName, namespace)
		} else {
			return nil, e
		}
	}
	sbName, ip := claimSandbox(obj)
	if sbName == "" {
		return nil, newErr(KindNotReady, nil, "claim %s/%s names no sandbox yet; wait for it to become ready", namespace, claimName)
	}
	if _, err := c.kube.getSandbox(ctx, namespace, sbName); err != nil {
		return nil, err
	}
	return &Sandbox{client: c, claimName: claimName, name: sbName, namespace: namespace, podIP: ip, active: true}, nil
}

// SandboxByName is a handle on a Sandbox by its own name, without a claim (a Sandbox created
// directly). Terminate on it deletes nothing.
func (c *Client) SandboxByName(namespace, sandboxName string) *Sandbox {
	if namespace == "" {
		namespace = c.opts.Namespace
	}
	return &Sandbox{client: c, name: sandboxName, namespace: namespace, active: true}
}

// DeleteSandbox deletes a claim (and with it its sandbox). A claim that is gone already is
// not an error.
func (c *Client) DeleteSandbox(ctx context.Context, claimName, namespace string) error {
	if namespace == "" {
		namespace = c.opts.Namespace
	}
	c.mu.Lock()
	if sb := c.sandboxes[namespace+"/"+claimName]; sb != nil {
		sb.closeHandle()
		delete(c.sandboxes, namespace+"/"+claimName)
	}
	c.mu.Unlock()
	return c.kube.deleteClaim(ctx, namespace, claimName)
}

// ActiveSandboxes lists "namespace/claim" of the sandboxes this client created and has not
// deleted.
func (c *Client) ActiveSandboxes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.sandboxes))
	for k := range c.sandboxes {
		out = append(out, k)
	}
	return out
}

// DeleteAll deletes every sandbox this client created; it returns the first error.
func (c *Client) DeleteAll(ctx context.Context) error {
	c.mu.Lock()
	all := make([]*Sandbox, 0, len(c.sandboxes))
	for _, sb := range c.sandboxes {
		all = append(all, sb)
	}
	c.mu.Unlock()
	var first error
	for _, sb := range all {
		if err := sb.Terminate(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Close stops the tunnel and closes idle connections; sandboxes keep running.
func (c *Client) Close() {
	if c.tunnel != nil {
		c.tunnel.close()
	}
	c.http.CloseIdleConnections()
}

func (c *Client) forget(namespace, claim string) {
	c.mu.Lock()
	delete(c.sandboxes, namespace+"/"+claim)
	c.mu.Unlock()
}
