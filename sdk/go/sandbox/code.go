// Code: running code cells in persistent interpreter contexts (Python, JavaScript, bash) over
// sandboxd's /v2/code API.

package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// CodeOutput is a cell's value: its text and its rich representations (MIME type → data).
type CodeOutput struct {
	Text string            `json:"text"`
	Data map[string]string `json:"data,omitempty"`
}

// CodeError is the exception a cell raised.
type CodeError struct {
	Name      string `json:"name"`
	Value     string `json:"value"`
	Traceback string `json:"traceback"`
}

// CodeResult is the outcome of a cell.
type CodeResult struct {
	Stdout  string
	Stderr  string
	Results []CodeOutput
	Error   *CodeError
	// Status is "ok", "error", "timeout", "interrupted" or "died".
	Status         string
	Context        string
	ExecutionCount int
	Truncated      bool
	DurationMs     float64
}

// Text is the text of the cell's last value ("" when it had none).
func (r *CodeResult) Text() string {
	if len(r.Results) == 0 {
		return ""
	}
	return r.Results[len(r.Results)-1].Text
}

// WithLanguage picks the interpreter of RunCode: "python" (default), "javascript" or "bash".
func WithLanguage(lang string) CallOption { return func(o *callOptions) { o.language = lang } }

// WithContext runs the cell in the named context (default: the language's default context).
func WithContext(id string) CallOption { return func(o *callOptions) { o.context = id } }

type codeEvent struct {
	Type           string          `json:"type"`
	Data           json.RawMessage `json:"data"`
	Text           string          `json:"text"`
	Name           string          `json:"name"`
	Value          string          `json:"value"`
	Traceback      string          `json:"traceback"`
	Status         string          `json:"status"`
	Context        string          `json:"context"`
	ExecutionCount int             `json:"execution_count"`
	Truncated      bool            `json:"truncated"`
	DurationMs     float64         `json:"duration_ms"`
}

// RunCode runs a cell; state (variables, imports) persists in its context between calls.
// An exception in the cell is not an error: see CodeResult.Error. Past WithTimeout the cell is
// interrupted (the context keeps its state) and a CommandTimeoutError returned.
func (s *Sandbox) RunCode(ctx context.Context, code string, opts ...CallOption) (*CodeResult, error) {
	o := collect(opts)
	lang := o.language
	if lang == "" {
		lang = "python"
	}
	body := map[string]any{"code": code, "language": lang}
	if o.context != "" {
		body["context"] = o.context
	}
	if o.timeout > 0 {
		body["timeout"] = o.timeout.Seconds()
	}
	if o.maxOutputBytes > 0 {
		body["max_output_bytes"] = o.maxOutputBytes
	}
	what := fmt.Sprintf("running a %s cell in sandbox %s/%s", lang, s.namespace, s.name)
	resp, err := s.send(ctx, request{method: http.MethodPost, path: "/v2/code/run", body: jsonBody(body),
		header:  http.Header{"Content-Type": {"application/json"}, "Accept": {"application/x-ndjson"}},
		timeout: httpTimeout(o.timeout), what: what})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	res := &CodeResult{}
	var out, errOut strings.Builder
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	ended := false
	for !ended {
		line, rerr := r.ReadBytes('\n')
		if strings.TrimSpace(string(line)) != "" {
			var ev codeEvent
			if err := json.Unmarshal(line, &ev); err != nil {
				return nil, newErr(KindStream, err, "%s: an event of the output stream is not JSON: %v", what, err)
			}
			switch ev.Type {
			case "stdout", "stderr":
				var d string
				_ = json.Unmarshal(ev.Data, &d)
				if ev.Type == "stdout" {
					out.WriteString(d)
					if o.onStdout != nil {
						o.onStdout(d)
					}
				} else {
					errOut.WriteString(d)
					if o.onStderr != nil {
						o.onStderr(d)
					}
				}
			case "result":
				co := CodeOutput{Text: ev.Text}
				_ = json.Unmarshal(ev.Data, &co.Data)
				res.Results = append(res.Results, co)
			case "error":
				res.Error = &CodeError{Name: ev.Name, Value: ev.Value, Traceback: ev.Traceback}
			case "end":
				res.Status, res.Context, res.ExecutionCount = ev.Status, ev.Context, ev.ExecutionCount
				res.Truncated, res.DurationMs = ev.Truncated, ev.DurationMs
				ended = true
			}
		}
		if rerr != nil && !ended {
			if errors.Is(rerr, io.EOF) {
				return nil, newErr(KindStream, rerr, "%s: the output stream ended without an end event; the sandbox may have been deleted or restarted (see Status())", what)
			}
			return nil, newErr(KindStream, rerr, "%s: lost the connection to the output stream: %v", what, rerr)
		}
	}
	res.Stdout, res.Stderr = out.String(), errOut.String()
	if res.Status == "timeout" {
		return res, &Error{Kind: KindCommandTimeout, Message: fmt.Sprintf(
			"%s: ran past its timeout of %s and was interrupted (the context keeps its state)", what, o.timeout)}
	}
	return res, nil
}

// CodeContext is a persistent interpreter of RunCode.
type CodeContext struct {
	ID             string `json:"id"`
	Language       string `json:"language"`
	Cwd            string `json:"cwd"`
	CreatedAt      string `json:"created_at"`
	ExecutionCount int    `json:"execution_count"`
	PID            int    `json:"pid"`
}

// CodeContextOptions configure CreateContext.
type CodeContextOptions struct {
	// ID names the context (default: one sandboxd picks).
	ID string
	// Cwd is the interpreter's working directory; Env its environment.
	Cwd string
	Env map[string]string
}

// Code manages the interpreter contexts of a sandbox.
type Code struct{ s *Sandbox }

// Code returns the sandbox's code-context API.
func (s *Sandbox) Code() *Code { return &Code{s: s} }

// CreateContext starts an interpreter of language ("python", "javascript", "bash").
func (c *Code) CreateContext(ctx context.Context, language string, o CodeContextOptions) (*CodeContext, error) {
	body := map[string]any{"language": language}
	if o.ID != "" {
		body["id"] = o.ID
	}
	if o.Cwd != "" {
		body["cwd"] = o.Cwd
	}
	if o.Env != nil {
		body["env"] = o.Env
	}
	what := fmt.Sprintf("creating a %s code context in sandbox %s/%s", language, c.s.namespace, c.s.name)
	resp, err := c.s.send(ctx, request{method: http.MethodPost, path: "/v2/code/contexts", body: jsonBody(body),
		header: http.Header{"Content-Type": {"application/json"}}, what: what})
	if err != nil {
		return nil, err
	}
	var out CodeContext
	return &out, readJSON(resp, what, &out)
}

// ListContexts lists the interpreter contexts.
func (c *Code) ListContexts(ctx context.Context) ([]CodeContext, error) {
	what := fmt.Sprintf("listing code contexts of sandbox %s/%s", c.s.namespace, c.s.name)
	resp, err := c.s.send(ctx, request{method: http.MethodGet, path: "/v2/code/contexts", what: what})
	if err != nil {
		return nil, err
	}
	var out struct {
		Contexts []CodeContext `json:"contexts"`
	}
	return out.Contexts, readJSON(resp, what, &out)
}

func (c *Code) contextCall(ctx context.Context, method, id, verb, suffix string) error {
	resp, err := c.s.send(ctx, request{method: method, path: "/v2/code/contexts/" + url.PathEscape(id) + suffix,
		what: fmt.Sprintf("%s code context %s of sandbox %s/%s", verb, id, c.s.namespace, c.s.name)})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// DeleteContext stops an interpreter context.
func (c *Code) DeleteContext(ctx context.Context, id string) error {
	return c.contextCall(ctx, http.MethodDelete, id, "deleting", "")
}

// Interrupt interrupts the cell running in a context (its state stays).
func (c *Code) Interrupt(ctx context.Context, id string) error {
	return c.contextCall(ctx, http.MethodPost, id, "interrupting", "/interrupt")
}

// Restart gives a context a fresh interpreter (its state is lost).
func (c *Code) Restart(ctx context.Context, id string) error {
	return c.contextCall(ctx, http.MethodPost, id, "restarting", "/restart")
}
