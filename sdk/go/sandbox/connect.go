// Connection resolution: from Options to the API server's rest.Config (an `agent-sandbox up`
// endpoints.json, a kubeconfig, or the service account) and to the data plane (router URL
// and token, pod IPs, or a port-forward tunnel).

package sandbox

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

const upHint = "Is `agent-sandbox up` running? Start it (as root) with `agent-sandbox up`, " +
	"or point Options.DataDir at the data directory of a running one."

type endpoints struct {
	APIServer       string `json:"apiServer"`
	Kubeconfig      string `json:"kubeconfig"`
	Router          string `json:"router"`
	RouterTokenFile string `json:"routerTokenFile"`
}

func dataDir(explicit string) string {
	if explicit != "" {
		return explicit
	}
	if d := os.Getenv("AGENT_SANDBOX_DATA_DIR"); d != "" {
		return d
	}
	return defaultDataDir
}

func readEndpoints(dir string) (*endpoints, error) {
	path := filepath.Join(dir, "endpoints.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, newErr(KindConnection, err,
			"no local agent-sandbox found: %s does not exist. Start one with `agent-sandbox up` "+
				"(as root), set Options.DataDir (or AGENT_SANDBOX_DATA_DIR) to the data directory "+
				"of a running one, or give Options.Kubeconfig and Options.RouterURL", path)
	}
	if err != nil {
		return nil, newErr(KindConfig, err, "cannot read %s: %v", path, err)
	}
	var ep endpoints
	if err := json.Unmarshal(b, &ep); err != nil {
		return nil, newErr(KindConfig, err, "cannot parse %s: %v", path, err)
	}
	if ep.Kubeconfig == "" {
		ep.Kubeconfig = filepath.Join(dir, "kubeconfig")
	}
	if ep.RouterTokenFile == "" {
		ep.RouterTokenFile = filepath.Join(dir, "router-token")
	}
	return &ep, nil
}

// resolved is what NewClient decided.
type resolved struct {
	rest        *rest.Config
	mode        Mode
	routerURL   string
	token       *tokenSource
	description string
	hint        string
}

func loadKubeconfig(path, context string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		where := path
		if where == "" {
			where = "$KUBECONFIG or ~/.kube/config"
		}
		return nil, newErr(KindConfig, err,
			"cannot load the kubeconfig %s: %v; give Options.Kubeconfig, Options.DataDir of a "+
				"running `agent-sandbox up`, or Options.RESTConfig", where, err)
	}
	return cfg, nil
}

func haveKubeconfig() bool {
	if env := os.Getenv("KUBECONFIG"); env != "" {
		for _, p := range filepath.SplitList(env) {
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return true
			}
		}
		return false
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(home, ".kube", "config"))
	return err == nil
}

func resolve(o *Options) (*resolved, error) {
	for k := range o.ExtraHeaders {
		if strings.HasPrefix(strings.ToLower(k), "x-sandbox-") {
			return nil, newErr(KindConfig, nil,
				"Options.ExtraHeaders: %s is set by the SDK itself; remove it", k)
		}
	}
	r := &resolved{token: &tokenSource{token: o.RouterToken, file: o.RouterTokenFile}}
	switch {
	case o.RESTConfig != nil:
		r.rest = rest.CopyConfig(o.RESTConfig)
		r.description = "the API server " + o.RESTConfig.Host
	case o.Kubeconfig != "":
		cfg, err := loadKubeconfig(o.Kubeconfig, o.Context)
		if err != nil {
			return nil, err
		}
		r.rest, r.description = cfg, "the kubeconfig "+o.Kubeconfig
	default:
		dir := dataDir(o.DataDir)
		_, statErr := os.Stat(filepath.Join(dir, "endpoints.json"))
		if o.DataDir != "" || statErr == nil {
			ep, err := readEndpoints(dir)
			if err != nil {
				return nil, err
			}
			cfg, err := loadKubeconfig(ep.Kubeconfig, o.Context)
			if err != nil {
				return nil, err
			}
			if ep.APIServer != "" {
				cfg.Host = ep.APIServer
			}
			r.rest = cfg
			r.description = "agent-sandbox up (" + dir + ")"
			r.hint = upHint + " (" + filepath.Join(dir, "endpoints.json") +
				" may be left from an earlier run.)"
			if o.RouterURL == "" {
				r.routerURL = ep.Router
			}
			if o.RouterToken == "" && o.RouterTokenFile == "" {
				r.token.file = ep.RouterTokenFile
			}
			break
		}
		if os.Getenv("KUBERNETES_SERVICE_HOST") != "" && os.Getenv("KUBECONFIG") == "" {
			cfg, err := rest.InClusterConfig()
			if err != nil {
				return nil, newErr(KindConfig, err, "cannot use the Pod's service account: %v", err)
			}
			r.rest, r.description = cfg, "the in-cluster service account"
			break
		}
		if !haveKubeconfig() {
			return nil, newErr(KindConnection, nil,
				"no agent-sandbox to connect to: %s does not exist (no local `agent-sandbox up`; "+
					"set Options.DataDir or AGENT_SANDBOX_DATA_DIR if it uses another data "+
					"directory), this is not a Kubernetes Pod, and there is no kubeconfig. Start "+
					"`agent-sandbox up`, or give Options.Kubeconfig and Options.RouterURL",
				filepath.Join(dir, "endpoints.json"))
		}
		cfg, err := loadKubeconfig("", o.Context)
		if err != nil {
			return nil, err
		}
		r.rest, r.description = cfg, "the default kubeconfig"
	}
	if o.RouterURL != "" {
		r.routerURL = o.RouterURL
	}
	if r.routerURL == "" {
		r.routerURL = os.Getenv("AGENT_SANDBOX_ROUTER_URL")
		if r.token.token == "" && r.token.file == "" {
			r.token.token = os.Getenv("AGENT_SANDBOX_ROUTER_TOKEN")
			r.token.file = os.Getenv("AGENT_SANDBOX_ROUTER_TOKEN_FILE")
		}
	}
	r.routerURL = strings.TrimRight(r.routerURL, "/")
	r.mode = o.Mode
	if r.mode == "" {
		switch {
		case r.routerURL != "":
			r.mode = ModeRouter
		case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
			r.mode = ModePodIP
		default:
			r.mode = ModePortForward
		}
	}
	switch r.mode {
	case ModeRouter:
		if r.routerURL == "" {
			return nil, newErr(KindConfig, nil,
				"ModeRouter needs the router's URL: give Options.RouterURL (or "+
					"AGENT_SANDBOX_ROUTER_URL), or Options.DataDir of a local `agent-sandbox up`")
		}
	case ModePodIP, ModePortForward:
	default:
		return nil, newErr(KindConfig, nil, "unknown Options.Mode %q (router, pod-ip or port-forward)", r.mode)
	}
	return r, nil
}

// tokenSource reads the router token, from a file re-read at most every 30 s.
type tokenSource struct {
	token string
	file  string

	mu   sync.Mutex
	read time.Time
	val  string
}

func (t *tokenSource) get() (string, error) {
	if t.token != "" {
		return strings.TrimSpace(t.token), nil
	}
	if t.file == "" {
		return "", nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.val == "" || time.Since(t.read) > 30*time.Second {
		b, err := os.ReadFile(t.file)
		if err != nil {
			return "", newErr(KindConfig, err, "cannot read the router token file %s: %v", t.file, err)
		}
		t.val, t.read = strings.TrimSpace(string(b)), time.Now()
	}
	return t.val, nil
}
