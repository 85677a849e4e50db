// The shared wire vectors (sdk/vectors/vectors.json): each sent as raw HTTP through the router
// and checked against its expected status and body, then made through this SDK and checked
// against its expected result or error kind. The Python and TypeScript SDKs run the same file.

package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	unknownSandbox = "vectors-no-such-sandbox"
	noServer       = "http://127.0.0.1:9"
)

type vectorFile struct {
	Vectors []vector `json:"vectors"`
}

type vector struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	Wire   *struct {
		Method  string            `json:"method"`
		Path    string            `json:"path"`
		Headers map[string]string `json:"headers"`
		JSON    any               `json:"json"`
		Text    *string           `json:"text"`
		Status  int               `json:"status"`
		Body    any               `json:"body"`
	} `json:"wire"`
	SDK *struct {
		Call   string         `json:"call"`
		Args   map[string]any `json:"args"`
		Result any            `json:"result"`
		Error  *struct {
			Kind            Kind    `json:"kind"`
			Status          int     `json:"status"`
			Code            string  `json:"code"`
			MessageContains string  `json:"message_contains"`
			ResultStdout    *string `json:"result_stdout"`
		} `json:"error"`
	} `json:"sdk"`
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "vectors", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	return f.Vectors
}

// subset: expected is contained in actual (object keys recursively, each list item in some
// item of the list, other values equal).
func subset(expected, actual any, where string) error {
	switch e := expected.(type) {
	case map[string]any:
		a, ok := actual.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: expected an object, got %#v", where, actual)
		}
		for k, v := range e {
			av, ok := a[k]
			if !ok {
				return fmt.Errorf("%s.%s: missing in %#v", where, k, actual)
			}
			if err := subset(v, av, where+"."+k); err != nil {
				return err
			}
		}
	case []any:
		a, ok := actual.([]any)
		if !ok {
			return fmt.Errorf("%s: expected a list, got %#v", where, actual)
		}
	items:
		for i, item := range e {
			for _, x := range a {
				if subset(item, x, where) == nil {
					continue items
				}
			}
			return fmt.Errorf("%s[%d]: %#v not in %#v", where, i, item, actual)
		}
	default:
		if !reflect.DeepEqual(expected, actual) {
			return fmt.Errorf("%s: expected %#v, got %#v", where, expected, actual)
		}
	}
	return nil
}

func routerInfo(t *testing.T) (string, string) {
	t.Helper()
	ep, err := readEndpoints(testDataDir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(ep.RouterTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(ep.Router, "/"), strings.TrimSpace(string(tok))
}

func TestVectorsWire(t *testing.T) {
	router, token := routerInfo(t)
	for _, v := range loadVectors(t) {
		if v.Wire == nil {
			continue
		}
		t.Run(v.Name, func(t *testing.T) {
			w := v.Wire
			var body io.Reader
			h := http.Header{}
			if w.JSON != nil {
				body = bytes.NewReader(jsonBody(w.JSON))
				h.Set("Content-Type", "application/json")
			} else if w.Text != nil && (w.Method == "PUT" || w.Method == "POST") {
				body = strings.NewReader(*w.Text)
			}
			req, err := http.NewRequestWithContext(testCtx(t, time.Minute), w.Method, router+w.Path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = h
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set(headerSandboxID, shared.Name())
			req.Header.Set(headerSandboxNamespace, shared.Namespace())
			req.Header.Set(headerSandboxPort, "8080")
			switch v.Target {
			case "wrong-token":
				req.Header.Set("Authorization", "Bearer wrong-token")
			case "no-sandbox-id":
				req.Header.Del(headerSandboxID)
				req.Header.Del(headerSandboxNamespace)
				req.Header.Del(headerSandboxPort)
			case "unknown-sandbox":
				req.Header.Set(headerSandboxID, unknownSandbox)
			}
			for k, val := range w.Headers {
				req.Header.Set(k, val)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != w.Status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, w.Status, got)
			}
			if w.Body != nil {
				var j any
				if err := json.Unmarshal(got, &j); err != nil {
					t.Fatalf("body is not JSON: %s", got)
				}
				if err := subset(w.Body, j, v.Name); err != nil {
					t.Fatal(err)
				}
			}
			if w.Text != nil && w.Method == "GET" && string(got) != *w.Text {
				t.Fatalf("body %q, want %q", got, *w.Text)
			}
		})
	}
}

func vectorHandle(t *testing.T, target string) *Sandbox {
	t.Helper()
	router, token := routerInfo(t)
	switch target {
	case "sandbox":
		return shared
	case "wrong-token", "unknown-sandbox", "no-server":
		o := Options{DataDir: testDataDir, RouterURL: router, RouterToken: token, Mode: ModeRouter}
		name := shared.Name()
		switch target {
		case "wrong-token":
			o.RouterToken = "wrong-token"
		case "no-server":
			o.RouterURL = noServer
		default:
			name = unknownSandbox
		}
		return newTestClient(t, o).SandboxByName(shared.Namespace(), name)
	case "terminated":
		c := newTestClient(t, Options{})
		ctx := testCtx(t, time.Minute)
		sb, err := c.CreateSandbox(ctx, testPool, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.Terminate(ctx); err != nil {
			t.Fatal(err)
		}
		return sb
	}
	t.Fatalf("unknown target %s", target)
	return nil
}

func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

func vectorCall(ctx context.Context, sb *Sandbox, call string, a map[string]any) (any, error) {
	switch call {
	case "run":
		var opts []CallOption
		if t, ok := a["timeout"].(float64); ok {
			opts = append(opts, WithTimeout(time.Duration(t*float64(time.Second))))
		}
		if env, ok := a["env"].(map[string]any); ok {
			m := map[string]string{}
			for k, v := range env {
				m[k] = fmt.Sprint(v)
			}
			opts = append(opts, WithEnv(m))
		}
		if s, ok := a["stdin"].(string); ok {
			opts = append(opts, WithStdin(s))
		}
		var r *ExecutionResult
		var err error
		if argv, ok := a["argv"].([]any); ok {
			args := make([]string, len(argv))
			for i, x := range argv {
				args[i] = fmt.Sprint(x)
			}
			r, err = sb.Commands().RunArgs(ctx, args, opts...)
		} else {
			r, err = sb.Run(ctx, str(a, "command"), opts...)
		}
		if err != nil {
			return nil, err
		}
		return map[string]any{"exit_code": float64(r.ExitCode), "stdout": r.Stdout, "stderr": r.Stderr}, nil
	case "write":
		return nil, sb.Write(ctx, str(a, "path"), []byte(str(a, "content")))
	case "read":
		var opts []CallOption
		if m, ok := a["max_bytes"].(float64); ok {
			opts = append(opts, WithMaxBytes(int64(m)))
		}
		b, err := sb.Read(ctx, str(a, "path"), opts...)
		return string(b), err
	case "list":
		entries, err := sb.List(ctx, str(a, "path"))
		out := []any{}
		for _, e := range entries {
			out = append(out, map[string]any{"name": e.Name, "size": float64(e.Size), "type": e.Type})
		}
		return out, err
	case "exists":
		return sb.Exists(ctx, str(a, "path"))
	case "delete":
		rec, _ := a["recursive"].(bool)
		return nil, sb.Files().Delete(ctx, str(a, "path"), rec)
	case "run_code":
		r, err := sb.RunCode(ctx, str(a, "code"))
		if err != nil {
			return nil, err
		}
		out := map[string]any{"status": r.Status, "stdout": r.Stdout, "text": r.Text()}
		if r.Error != nil {
			out["error_name"] = r.Error.Name
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown call %s", call)
}

func TestVectorsSDK(t *testing.T) {
	for _, v := range loadVectors(t) {
		if v.SDK == nil {
			continue
		}
		t.Run(v.Name, func(t *testing.T) {
			s := v.SDK
			sb := vectorHandle(t, v.Target)
			got, err := vectorCall(testCtx(t, time.Minute), sb, s.Call, s.Args)
			if s.Error == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if e := subset(s.Result, got, v.Name); e != nil {
					t.Fatal(e)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want a %s, got %T %v (result %#v)", s.Error.Kind, err, err, got)
			}
			if e.Kind != s.Error.Kind {
				t.Fatalf("kind %s, want %s: %v", e.Kind, s.Error.Kind, e)
			}
			if s.Error.Status != 0 && e.StatusCode != s.Error.Status {
				t.Fatalf("status %d, want %d: %v", e.StatusCode, s.Error.Status, e)
			}
			if s.Error.Code != "" && e.Code != s.Error.Code {
				t.Fatalf("code %q, want %q: %v", e.Code, s.Error.Code, e)
			}
			if s.Error.MessageContains != "" && !strings.Contains(e.Message, s.Error.MessageContains) {
				t.Fatalf("message %q does not contain %q", e.Message, s.Error.MessageContains)
			}
			if s.Error.ResultStdout != nil && (e.Result == nil || e.Result.Stdout != *s.Error.ResultStdout) {
				t.Fatalf("result %#v, want stdout %q", e.Result, *s.Error.ResultStdout)
			}
		})
	}
}
