// Kubernetes side: SandboxClaims (create, wait until Ready, delete), Sandboxes (get, patch the
// operating mode, wait for a condition), SandboxTemplates and SandboxWarmPools, through
// client-go's dynamic client; and the translation of API errors into this package's Error.

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

var (
	gvrSandbox  = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxes"}
	gvrClaim    = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxclaims"}
	gvrTemplate = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxtemplates"}
	gvrPool     = schema.GroupVersionResource{Group: "extensions.agents.x-k8s.io", Version: "v1beta1", Resource: "sandboxwarmpools"}
)

const (
	labelCreatedBy       = "agents.x-k8s.io/created-by"
	annotFirstRequested  = "agents.x-k8s.io/client-first-requested-at"
	annotPodName         = "agents.x-k8s.io/pod-name"
	createdByValue       = "go-client"
	conditionReady       = "Ready"
	conditionSuspended   = "Suspended"
	reasonPoolNotFound   = "WarmPoolNotFound"
	reasonTemplateNotFnd = "TemplateNotFound"
)

var getOpts = metav1.GetOptions{}

// Ready=False reasons after which a claim never becomes ready.
var fatalReasons = map[string]bool{
	"InvalidMetadata": true, "EnvVarsInjectionRejected": true, "VolumeClaimTemplatesError": true,
	"ClaimExpired": true, "SandboxExpired": true, "InvalidConfiguration": true,
	"PodFailed": true, "PodSucceeded": true,
}

type kube struct {
	dyn    dynamic.Interface
	server string
	hint   string
}

// apiErr turns an error of the API server (or of reaching it) into an Error about what.
func (k *kube) apiErr(err error, what string) error {
	if err == nil {
		return nil
	}
	var own *Error
	if errors.As(err, &own) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return newErr(KindTimeout, err, "%s: the API server at %s did not answer in time", what, k.server)
	}
	if errors.Is(err, context.Canceled) {
		return newErr(KindTimeout, err, "%s: cancelled", what)
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		e := &Error{Kind: KindRequest, StatusCode: int(s.Code), Code: string(s.Reason), Err: err,
			Message: fmt.Sprintf("%s: %d %s", what, s.Code, s.Message)}
		switch s.Code {
		case 401:
			e.Message += "; the API server rejected the credentials: check the kubeconfig's token"
		case 403:
			e.Message += "; the kubeconfig's user may not do this: check its RBAC permissions"
		case 404:
			e.Kind = KindNotFound
		}
		return e
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused") {
		msg := fmt.Sprintf("%s: cannot reach the API server at %s: %v.", what, k.server, err)
		if k.hint != "" {
			msg += " " + k.hint
		}
		return &Error{Kind: KindConnection, Message: msg, Err: err}
	}
	return newErr(KindRequest, err, "%s: %v", what, err)
}

func readyCondition(obj *unstructured.Unstructured, ctype string) (status, reason, message string, found bool) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != ctype {
			continue
		}
		s, _ := m["status"].(string)
		r, _ := m["reason"].(string)
		msg, _ := m["message"].(string)
		return s, r, msg, true
	}
	return "", "", "", false
}

// claimSandbox is status.sandbox of a claim: the Sandbox's name and pod IPs.
func claimSandbox(obj *unstructured.Unstructured) (name string, podIP string) {
	name, _, _ = unstructured.NestedString(obj.Object, "status", "sandbox", "name")
	ips, _, _ := unstructured.NestedSlice(obj.Object, "status", "sandbox", "podIPs")
	return name, pickPodIP(ips)
}

// pickPodIP returns the first IPv4 address (an IPv4-mapped IPv6 one counts), else the first.
func pickPodIP(ips []any) string {
	best := ""
	for _, v := range ips {
		var ip string
		switch x := v.(type) {
		case string:
			ip = x
		case map[string]any:
			ip, _ = x["ip"].(string)
		}
		ip = strings.TrimSpace(ip)
		if ip == "" {
			continue
		}
		if strings.HasPrefix(strings.ToLower(ip), "::ffff:") && strings.Contains(ip, ".") {
			ip = ip[len("::ffff:"):]
		}
		if !strings.Contains(ip, ":") {
			return ip
		}
		if best == "" {
			best = ip
		}
	}
	return best
}

func (k *kube) createClaim(ctx context.Context, ns, name, pool string, o ClaimOptions) (*unstructured.Unstructured, error) {
	labels := map[string]any{labelCreatedBy: createdByValue}
	for key, v := range o.Labels {
		labels[key] = v
	}
	spec := map[string]any{"warmPoolRef": map[string]any{"name": pool}}
	if o.ShutdownAfter > 0 {
		spec["lifecycle"] = map[string]any{
			"shutdownTime":   time.Now().Add(o.ShutdownAfter).UTC().Format(time.RFC3339),
			"shutdownPolicy": "Delete",
		}
	}
	if len(o.Env) > 0 {
		env := []any{}
		for key, v := range o.Env {
			env = append(env, map[string]any{"name": key, "value": v})
		}
		spec["env"] = env
	}
	claim := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "extensions.agents.x-k8s.io/v1beta1",
		"kind":       "SandboxClaim",
		"metadata": map[string]any{
			"name": name, "namespace": ns, "labels": labels,
			"annotations": map[string]any{annotFirstRequested: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		"spec": spec,
	}}
	out, err := k.dyn.Resource(gvrClaim).Namespace(ns).Create(ctx, claim, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil, &Error{Kind: KindRequest, StatusCode: 409, Code: "AlreadyExists", Err: err,
				Message: fmt.Sprintf("claim %s/%s already exists: pick another ClaimName, or attach to it with GetSandbox", ns, name)}
		}
		if apierrors.IsNotFound(err) {
			return nil, newErr(KindConfig, err,
				"creating claim %s/%s: 404: namespace %q does not exist, or the API server does not serve "+
					"SandboxClaims (extensions.agents.x-k8s.io/v1beta1; install the CRDs with kubectl apply -f deploy/crds)",
				ns, name, ns)
		}
		return nil, k.apiErr(err, fmt.Sprintf("creating claim %s/%s", ns, name))
	}
	return out, nil
}

// checkClaim reports whether the claim is ready, or an error when it never will be.
func (k *kube) checkClaim(ctx context.Context, obj *unstructured.Unstructured, pool string) (bool, error) {
	ns, name := obj.GetNamespace(), obj.GetName()
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		reason, _ := m["reason"].(string)
		msg, _ := m["message"].(string)
		switch {
		case reason == reasonPoolNotFound:
			return false, newErr(KindWarmPoolNotFound, nil, "claim %s/%s: %s; %s", ns, name, msg, k.poolsHint(ctx, ns, pool))
		case reason == reasonTemplateNotFnd:
			return false, newErr(KindTemplateNotFound, nil,
				"claim %s/%s: %s; the warm pool %q names a SandboxTemplate that does not exist: create it, or fix the pool's sandboxTemplateRef",
				ns, name, msg, pool)
		case m["type"] == conditionReady && m["status"] == "False" && fatalReasons[reason]:
			return false, newErr(KindClaimFailed, nil, "claim %s/%s failed: %s: %s", ns, name, reason, msg)
		}
	}
	status, _, _, _ := readyCondition(obj, conditionReady)
	sb, _ := claimSandbox(obj)
	return status == "True" && sb != "", nil
}

func (k *kube) poolsHint(ctx context.Context, ns, pool string) string {
	list, err := k.dyn.Resource(gvrPool).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Sprintf("warm pool %q does not exist in namespace %s", pool, ns)
	}
	names := []string{}
	for _, p := range list.Items {
		names = append(names, p.GetName())
	}
	if _, err := k.dyn.Resource(gvrTemplate).Namespace(ns).Get(ctx, pool, metav1.GetOptions{}); err == nil {
		return fmt.Sprintf("warm pool %q does not exist in namespace %s, but a SandboxTemplate of that name does: create a SandboxWarmPool for it (pools here: %v)", pool, ns, names)
	}
	return fmt.Sprintf("warm pool %q does not exist in namespace %s; create it or pick one of %v", pool, ns, names)
}

// waitClaim watches the claim until it is Ready and names its Sandbox.
func (k *kube) waitClaim(ctx context.Context, created *unstructured.Unstructured, pool string, timeout time.Duration) (*unstructured.Unstructured, error) {
	ns, name := created.GetNamespace(), created.GetName()
	if ok, err := k.checkClaim(ctx, created, pool); ok || err != nil {
		return created, err
	}
	rv := created.GetResourceVersion()
	last := created
	for ctx.Err() == nil {
		w, err := k.dyn.Resource(gvrClaim).Namespace(ns).Watch(ctx, metav1.ListOptions{
			FieldSelector: "metadata.name=" + name, ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return nil, k.apiErr(err, fmt.Sprintf("watching claim %s/%s", ns, name))
		}
		done, obj, err := k.drainClaimWatch(ctx, w, pool, &rv)
		w.Stop()
		if obj != nil {
			last = obj
		}
		if err != nil || done {
			return obj, err
		}
		// The watch ended (or expired): read the claim again and resume from it.
		cur, err := k.dyn.Resource(gvrClaim).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				return nil, newErr(KindNotFound, err, "claim %s/%s was deleted while waiting for it to become ready", ns, name)
			}
			if ctx.Err() != nil {
				break
			}
			return nil, k.apiErr(err, fmt.Sprintf("reading claim %s/%s", ns, name))
		}
		last, rv = cur, cur.GetResourceVersion()
		if ok, err := k.checkClaim(ctx, cur, pool); ok || err != nil {
			return cur, err
		}
	}
	status, reason, msg, _ := readyCondition(last, conditionReady)
	return nil, newErr(KindTimeout, ctx.Err(),
		"claim %s/%s did not become ready within %s (Ready=%q %s: %s); check the warm pool %q (kubectl get sandboxwarmpool %s -n %s) and pass a larger timeout if sandboxes start slowly",
		ns, name, timeout, status, reason, msg, pool, pool, ns)
}

func (k *kube) drainClaimWatch(ctx context.Context, w watch.Interface, pool string, rv *string) (bool, *unstructured.Unstructured, error) {
	for {
		select {
		case <-ctx.Done():
			return false, nil, nil
		case ev, open := <-w.ResultChan():
			if !open {
				return false, nil, nil
			}
			obj, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				return false, nil, nil // an error event (e.g. 410 Gone): re-read
			}
			*rv = obj.GetResourceVersion()
			switch ev.Type {
			case watch.Deleted:
				return false, nil, newErr(KindNotFound, nil, "claim %s/%s was deleted while waiting for it to become ready", obj.GetNamespace(), obj.GetName())
			case watch.Bookmark:
				continue
			}
			ready, err := k.checkClaim(ctx, obj, pool)
			if ready || err != nil {
				return ready, obj, err
			}
		}
	}
}

func (k *kube) deleteClaim(ctx context.Context, ns, name string) error {
	policy := metav1.DeletePropagationBackground
	err := k.dyn.Resource(gvrClaim).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &policy})
	if err != nil && !apierrors.IsNotFound(err) {
		return k.apiErr(err, fmt.Sprintf("deleting claim %s/%s", ns, name))
	}
	return nil
}

func (k *kube) getSandbox(ctx context.Context, ns, name string) (*unstructured.Unstructured, error) {
	obj, err := k.dyn.Resource(gvrSandbox).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, newErr(KindNotFound, err, "Sandbox %s/%s does not exist (any more)", ns, name)
	}
	if err != nil {
		return nil, k.apiErr(err, fmt.Sprintf("reading Sandbox %s/%s", ns, name))
	}
	return obj, nil
}

func (k *kube) setOperatingMode(ctx context.Context, ns, name, mode string) error {
	patch := []byte(fmt.Sprintf(`{"spec":{"operatingMode":%q}}`, mode))
	_, err := k.dyn.Resource(gvrSandbox).Namespace(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return newErr(KindNotFound, err, "Sandbox %s/%s does not exist (any more)", ns, name)
	}
	return k.apiErr(err, fmt.Sprintf("setting spec.operatingMode of Sandbox %s/%s to %s", ns, name, mode))
}

// waitSandbox watches the Sandbox until condition ctype is True (and, with needIP, it has a
// pod IP); it returns the Sandbox.
func (k *kube) waitSandbox(ctx context.Context, ns, name, ctype string, needIP bool, what string, timeout time.Duration) (*unstructured.Unstructured, error) {
	done := func(obj *unstructured.Unstructured) bool {
		status, _, _, _ := readyCondition(obj, ctype)
		if status != "True" {
			return false
		}
		if !needIP {
			return true
		}
		ips, _, _ := unstructured.NestedSlice(obj.Object, "status", "podIPs")
		return len(ips) > 0
	}
	last, err := k.getSandbox(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	for ctx.Err() == nil {
		if done(last) {
			return last, nil
		}
		w, err := k.dyn.Resource(gvrSandbox).Namespace(ns).Watch(ctx, metav1.ListOptions{
			FieldSelector: "metadata.name=" + name, ResourceVersion: last.GetResourceVersion()})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return nil, k.apiErr(err, fmt.Sprintf("watching Sandbox %s/%s", ns, name))
		}
	events:
		for {
			select {
			case <-ctx.Done():
				break events
			case ev, open := <-w.ResultChan():
				if !open {
					break events
				}
				obj, ok := ev.Object.(*unstructured.Unstructured)
				if !ok {
					break events
				}
				if ev.Type == watch.Deleted {
					w.Stop()
					return nil, newErr(KindNotFound, nil, "Sandbox %s/%s was deleted during %s", ns, name, what)
				}
				last = obj
				if done(obj) {
					w.Stop()
					return obj, nil
				}
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			break
		}
		if last, err = k.getSandbox(ctx, ns, name); err != nil {
			return nil, err
		}
	}
	_, reason, msg, _ := readyCondition(last, ctype)
	return nil, newErr(KindTimeout, ctx.Err(),
		"%s of Sandbox %s/%s did not complete within %s (last %s condition: %s %s); check `kubectl describe sandbox %s -n %s`",
		what, ns, name, timeout, ctype, reason, msg, name, ns)
}
