// Options: how a Client finds the API server (control plane) and reaches sandboxes (data
// plane), with their defaults.

package sandbox

import (
	"net/http"
	"time"

	"k8s.io/client-go/rest"
)

// Mode is how requests reach a sandbox's runtime (sandboxd).
type Mode string

const (
	// ModeRouter sends every request to the sandbox router with its bearer token and the
	// X-Sandbox-* headers. The default when a router URL is known (a local `agent-sandbox
	// up`, Options.RouterURL, or $AGENT_SANDBOX_ROUTER_URL).
	ModeRouter Mode = "router"
	// ModePodIP sends requests straight to the sandbox's pod IP (inside the cluster, or on
	// the machine that runs `agent-sandbox up`).
	ModePodIP Mode = "pod-ip"
	// ModePortForward opens a port-forward tunnel through the API server to the router's
	// Pod (upstream's default; no router token needed: the API server authenticates it).
	ModePortForward Mode = "port-forward"
)

const (
	defaultNamespace           = "default"
	defaultServerPort          = 8080
	defaultRouterNamespace     = "agent-sandbox-system"
	defaultRouterService       = "sandbox-router-svc"
	defaultRouterServicePort   = 8080
	defaultSandboxReadyTimeout = 180 * time.Second
	defaultRequestTimeout      = 60 * time.Second
	defaultPortForwardTimeout  = 30 * time.Second
	defaultDataDir             = "/var/lib/agent-sandbox"
)

// Options configures a Client. The zero value finds a local `agent-sandbox up` (the data
// directory of $AGENT_SANDBOX_DATA_DIR, else /var/lib/agent-sandbox), else the default
// kubeconfig with $AGENT_SANDBOX_ROUTER_URL, else a port-forward to the router, else the
// service account inside a Pod with pod IPs.
type Options struct {
	// DataDir is the data directory of a local `agent-sandbox up`: its endpoints.json names
	// the API server, its kubeconfig, the router and the router's token file.
	DataDir string
	// Kubeconfig is a kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
	Kubeconfig string
	// Context is the kubeconfig context (default: the current one).
	Context string
	// RESTConfig, when set, is used for the API server instead of a kubeconfig.
	RESTConfig *rest.Config

	// Mode is how sandboxes are reached (default: see Options).
	Mode Mode
	// RouterURL is the sandbox router (upstream's APIURL), e.g. http://127.0.0.1:8080.
	RouterURL string
	// RouterToken is the router's bearer token; RouterTokenFile a file holding it.
	RouterToken     string
	RouterTokenFile string
	// ExtraHeaders are sent with every request to the router (e.g. an Authorization of a
	// proxy in front of it). X-Sandbox-* headers are the SDK's and refused here.
	ExtraHeaders map[string]string
	// RouterNamespace and RouterService name the router's Service for ModePortForward
	// (default agent-sandbox-system, sandbox-router-svc).
	RouterNamespace string
	RouterService   string

	// Namespace of the claims (default "default").
	Namespace string
	// ServerPort is sandboxd's REST port in the sandbox (default 8080).
	ServerPort int

	// SandboxReadyTimeout bounds CreateSandbox (default 180 s).
	SandboxReadyTimeout time.Duration
	// RequestTimeout bounds each file and control request to a sandbox (default 60 s).
	// Commands and cells are bounded by their own timeout instead.
	RequestTimeout time.Duration
	// PortForwardReadyTimeout bounds starting the tunnel of ModePortForward (default 30 s).
	PortForwardReadyTimeout time.Duration

	// HTTPTransport, when set, carries the requests to sandboxes (e.g. for custom TLS).
	HTTPTransport http.RoundTripper
}

func (o *Options) defaults() {
	if o.Namespace == "" {
		o.Namespace = defaultNamespace
	}
	if o.ServerPort == 0 {
		o.ServerPort = defaultServerPort
	}
	if o.RouterNamespace == "" {
		o.RouterNamespace = defaultRouterNamespace
	}
	if o.RouterService == "" {
		o.RouterService = defaultRouterService
	}
	if o.SandboxReadyTimeout <= 0 {
		o.SandboxReadyTimeout = defaultSandboxReadyTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = defaultRequestTimeout
	}
	if o.PortForwardReadyTimeout <= 0 {
		o.PortForwardReadyTimeout = defaultPortForwardTimeout
	}
}

// ClaimOptions are the per-claim choices of CreateSandbox.
type ClaimOptions struct {
	// ClaimName names the claim (a DNS-1123 subdomain); default sandbox-claim-<8 hex>.
	ClaimName string
	// Labels of the claim.
	Labels map[string]string
	// Env is injected into the sandbox (the template must allow it).
	Env map[string]string
	// ShutdownAfter sets the claim's lifecycle.shutdownTime to now plus this duration.
	ShutdownAfter time.Duration
	// Timeout overrides Options.SandboxReadyTimeout.
	Timeout time.Duration
}
