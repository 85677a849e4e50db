// Sandbox: the handle on one claimed sandbox: its names and pod IP, status, suspend and
// resume, terminate; the commands, files, code and terminal APIs hang off it.

package sandbox

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Status values of Sandbox.Status, as upstream's SDK reports them.
const (
	StatusReady    = "SandboxReady"
	StatusNotReady = "SandboxNotReady"
	StatusNotFound = "SandboxNotFound"
)

// Sandbox is a handle on one sandbox. It is safe for concurrent use.
type Sandbox struct {
	client    *Client
	claimName string
	name      string
	namespace string

	mu      sync.Mutex
	podIP   string
	podName string
	active  bool
}

// ClaimName is the SandboxClaim's name ("" for a handle made by SandboxByName).
func (s *Sandbox) ClaimName() string { return s.claimName }

// Name is the Sandbox's name (the router's X-Sandbox-ID).
func (s *Sandbox) Name() string { return s.name }

// Namespace of the claim and the Sandbox.
func (s *Sandbox) Namespace() string { return s.namespace }

// PodIP is the pod IP the SDK sends to (from the claim's status; refreshed after a resume).
func (s *Sandbox) PodIP() string { return s.podIPNow() }

// IsActive is false once Terminate or Close was called.
func (s *Sandbox) IsActive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

func (s *Sandbox) podIPNow() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.podIP
}

func (s *Sandbox) setPodIP(ip string) {
	s.mu.Lock()
	s.podIP = ip
	s.mu.Unlock()
}

func (s *Sandbox) refreshPodIP(ctx context.Context) (string, error) {
	obj, err := s.client.kube.getSandbox(ctx, s.namespace, s.name)
	if err != nil {
		if KindOf(err) == KindNotFound {
			// Never send a stale address again: the router would try to reach it.
			s.setPodIP("")
			return "", newErr(KindNotReady, err, "sandbox %s/%s does not exist (any more); claim a new one", s.namespace, s.name)
		}
		return "", err
	}
	ips, _, _ := unstructured.NestedSlice(obj.Object, "status", "podIPs")
	ip := pickPodIP(ips)
	s.setPodIP(ip)
	return ip, nil
}

func (s *Sandbox) requireActive() error {
	if !s.IsActive() {
		return newErr(KindNotReady, nil,
			"this handle on sandbox %s/%s is closed (terminated or closed); get a new one with Client.GetSandbox or CreateSandbox",
			s.namespace, s.name)
	}
	return nil
}

// Status is (StatusReady | StatusNotReady | StatusNotFound, the Ready condition's message).
func (s *Sandbox) Status(ctx context.Context) (string, string, error) {
	obj, err := s.client.kube.getSandbox(ctx, s.namespace, s.name)
	if KindOf(err) == KindNotFound {
		return StatusNotFound, err.Error(), nil
	}
	if err != nil {
		return "", "", err
	}
	status, _, msg, found := readyCondition(obj, conditionReady)
	if !found {
		return StatusNotReady, "the Sandbox has no Ready condition yet", nil
	}
	if status == "True" {
		return StatusReady, msg, nil
	}
	return StatusNotReady, msg, nil
}

// PodName is the name of the sandbox's Pod (its pod-name annotation, else the Sandbox's name).
func (s *Sandbox) PodName(ctx context.Context) (string, error) {
	s.mu.Lock()
	name := s.podName
	s.mu.Unlock()
	if name != "" {
		return name, nil
	}
	obj, err := s.client.kube.getSandbox(ctx, s.namespace, s.name)
	if err != nil {
		return "", err
	}
	name = obj.GetAnnotations()[annotPodName]
	if name == "" {
		name = s.name
	}
	s.mu.Lock()
	s.podName = name
	s.mu.Unlock()
	return name, nil
}

// IsSuspended reports whether spec.operatingMode is Suspended.
func (s *Sandbox) IsSuspended(ctx context.Context) (bool, error) {
	obj, err := s.client.kube.getSandbox(ctx, s.namespace, s.name)
	if err != nil {
		return false, err
	}
	mode, _, _ := unstructured.NestedString(obj.Object, "spec", "operatingMode")
	return mode == "Suspended", nil
}

// Suspend sets spec.operatingMode to Suspended: the Pod goes, volumes stay. It returns once
// the Sandbox reports Suspended, or when timeout (default 120 s) passes.
func (s *Sandbox) Suspend(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 120 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.client.kube.setOperatingMode(ctx, s.namespace, s.name, "Suspended"); err != nil {
		return err
	}
	s.setPodIP("")
	_, err := s.client.kube.waitSandbox(ctx, s.namespace, s.name, conditionSuspended, false, "suspend", timeout)
	return err
}

// Resume sets spec.operatingMode to Running and returns once the Sandbox is Ready with a pod
// IP and sandboxd answers, or when timeout (default 180 s) passes.
func (s *Sandbox) Resume(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 180 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.client.kube.setOperatingMode(ctx, s.namespace, s.name, "Running"); err != nil {
		return err
	}
	obj, err := s.client.kube.waitSandbox(ctx, s.namespace, s.name, conditionReady, true, "resume", timeout)
	if err != nil {
		return err
	}
	ips, _, _ := unstructured.NestedSlice(obj.Object, "status", "podIPs")
	s.setPodIP(pickPodIP(ips))
	s.mu.Lock()
	s.podName = ""
	s.mu.Unlock()
	for {
		resp, err := s.send(ctx, request{method: http.MethodGet, path: "/v1/health", what: "checking sandboxd",
			timeout: 5 * time.Second})
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return newErr(KindTimeout, err,
				"sandbox %s/%s is Ready but sandboxd did not answer within %s of resuming (last: %v); see its logs (kubectl logs -n %s)",
				s.namespace, s.name, timeout, err, s.namespace)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *Sandbox) closeHandle() {
	s.mu.Lock()
	s.active = false
	s.mu.Unlock()
}

// Close stops using this handle; the sandbox keeps running.
func (s *Sandbox) Close() { s.closeHandle() }

// Terminate deletes the claim (and with it the sandbox) and closes the handle. Idempotent.
func (s *Sandbox) Terminate(ctx context.Context) error {
	s.closeHandle()
	if s.claimName == "" {
		return nil
	}
	if err := s.client.kube.deleteClaim(ctx, s.namespace, s.claimName); err != nil {
		return err
	}
	s.client.forget(s.namespace, s.claimName)
	return nil
}

func (s *Sandbox) String() string {
	return fmt.Sprintf("Sandbox(%s/%s, claim %s)", s.namespace, s.name, s.claimName)
}
