// Commands: running commands in a sandbox over sandboxd's /v2/exec (foreground with streamed
// output, or in the background as a Process), and its process table (list, signal).

package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ExecutionResult is the outcome of a command.
type ExecutionResult struct {
	Stdout   string
	Stderr   string
	ExitCode int
	// Signal is the signal that killed the command, if one did.
	Signal     string
	TimedOut   bool
	Truncated  bool
	DurationMs float64
	PID        int
}

// OK is true when the command exited 0.
func (r *ExecutionResult) OK() bool { return r.ExitCode == 0 && !r.TimedOut }

// CallOption adjusts one call.
type CallOption func(*callOptions)

type callOptions struct {
	timeout        time.Duration
	env            map[string]string
	cwd            string
	stdin          *string
	maxOutputBytes int
	onStdout       func(string)
	onStderr       func(string)
	language       string
	context        string
	mode           string
	maxBytes       int64
}

func collect(opts []CallOption) callOptions {
	var o callOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithTimeout bounds the call. For a command or a cell, past it the process is killed (the
// cell interrupted) and a CommandTimeoutError returned with the output so far.
func WithTimeout(d time.Duration) CallOption { return func(o *callOptions) { o.timeout = d } }

// WithEnv sets environment variables of the command.
func WithEnv(env map[string]string) CallOption { return func(o *callOptions) { o.env = env } }

// WithCwd sets the command's working directory (relative to sandboxd's work directory).
func WithCwd(dir string) CallOption { return func(o *callOptions) { o.cwd = dir } }

// WithStdin gives the command this standard input.
func WithStdin(s string) CallOption { return func(o *callOptions) { o.stdin = &s } }

// WithMaxOutputBytes caps each output stream; beyond it output is dropped (Truncated).
func WithMaxOutputBytes(n int) CallOption { return func(o *callOptions) { o.maxOutputBytes = n } }

// OnStdout and OnStderr receive the output as it is produced.
func OnStdout(f func(string)) CallOption { return func(o *callOptions) { o.onStdout = f } }

// OnStderr: see OnStdout.
func OnStderr(f func(string)) CallOption { return func(o *callOptions) { o.onStderr = f } }

// WithMaxBytes limits Files.Read and ReadTo: a larger file stops the read with a
// TooLargeError (what was written before the limit stays written).
func WithMaxBytes(n int64) CallOption { return func(o *callOptions) { o.maxBytes = n } }

// WithMode sets the file mode of Files.Write ("0644").
func WithMode(mode string) CallOption { return func(o *callOptions) { o.mode = mode } }

// Commands runs commands in a sandbox.
type Commands struct{ s *Sandbox }

// Commands returns the sandbox's command API.
func (s *Sandbox) Commands() *Commands { return &Commands{s: s} }

// Run runs a shell command (/bin/sh -c) and waits for it; see Commands.Run.
func (s *Sandbox) Run(ctx context.Context, command string, opts ...CallOption) (*ExecutionResult, error) {
	return s.Commands().Run(ctx, command, opts...)
}

func describe(cmd any) string {
	var t string
	switch c := cmd.(type) {
	case string:
		t = c
	case []string:
		t = strings.Join(c, " ")
	}
	if len(t) > 80 {
		t = t[:77] + "..."
	}
	return t
}

func execBody(cmd any, o callOptions) ([]byte, error) {
	body := map[string]any{"command": cmd}
	if o.env != nil {
		body["env"] = o.env
	}
	if o.cwd != "" {
		body["cwd"] = o.cwd
	}
	if o.stdin != nil {
		body["stdin"] = *o.stdin
	}
	if o.timeout < 0 {
		return nil, newErr(KindConfig, nil, "timeout must be positive, not %s", o.timeout)
	}
	if o.timeout > 0 {
		body["timeout"] = o.timeout.Seconds()
	}
	if o.maxOutputBytes > 0 {
		body["max_output_bytes"] = o.maxOutputBytes
	}
	return jsonBody(body), nil
}

// httpTimeout is how long the exchange of a command may last: its own timeout and a margin,
// or a day for a command without one (sandboxd's default limit then applies).
func httpTimeout(t time.Duration) time.Duration {
	if t > 0 {
		return t + 30*time.Second
	}
	return 24 * time.Hour
}

// Run runs a shell command (/bin/sh -c) and waits for it. A non-zero exit is not an error.
// Past WithTimeout the command is killed and a CommandTimeoutError returned (Result has the
// output so far).
func (c *Commands) Run(ctx context.Context, command string, opts ...CallOption) (*ExecutionResult, error) {
	if strings.TrimSpace(command) == "" {
		return nil, newErr(KindConfig, nil, "the command is empty")
	}
	return c.run(ctx, command, opts)
}

// RunArgs runs a program with arguments, without a shell.
func (c *Commands) RunArgs(ctx context.Context, argv []string, opts ...CallOption) (*ExecutionResult, error) {
	if len(argv) == 0 {
		return nil, newErr(KindConfig, nil, "the command is empty")
	}
	return c.run(ctx, argv, opts)
}

func (c *Commands) run(ctx context.Context, cmd any, opts []CallOption) (*ExecutionResult, error) {
	p, err := c.start(ctx, cmd, collect(opts))
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

// Start runs a shell command in the background; its output is collected (and passed to
// OnStdout/OnStderr) as it comes. It lives until it ends, is killed, or its timeout passes.
func (c *Commands) Start(ctx context.Context, command string, opts ...CallOption) (*Process, error) {
	if strings.TrimSpace(command) == "" {
		return nil, newErr(KindConfig, nil, "the command is empty")
	}
	p, err := c.start(ctx, command, collect(opts))
	if err != nil {
		return nil, err
	}
	select {
	case <-p.started:
	case <-ctx.Done():
	}
	return p, nil
}

func (c *Commands) start(ctx context.Context, cmd any, o callOptions) (*Process, error) {
	body, err := execBody(cmd, o)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("running %q in sandbox %s/%s", describe(cmd), c.s.namespace, c.s.name)
	resp, err := c.s.send(ctx, request{method: http.MethodPost, path: "/v2/exec", body: body,
		header:  http.Header{"Content-Type": {"application/json"}, "Accept": {"application/x-ndjson"}},
		timeout: httpTimeout(o.timeout), what: what})
	if err != nil {
		return nil, err
	}
	p := &Process{commands: c, what: what, cmd: describe(cmd), o: o, resp: resp,
		started: make(chan struct{}), done: make(chan struct{})}
	go p.pump()
	return p, nil
}

// Process is a command started by Commands.Start.
type Process struct {
	commands *Commands
	what     string
	cmd      string
	o        callOptions
	resp     *http.Response

	started   chan struct{}
	startOnce sync.Once
	done      chan struct{}

	mu        sync.Mutex
	stdout    strings.Builder
	stderr    strings.Builder
	pid       int
	processID int
	result    *ExecutionResult
	err       error
}

type execEvent struct {
	Type       string   `json:"type"`
	Data       string   `json:"data"`
	PID        int      `json:"pid"`
	ProcessID  int      `json:"process_id"`
	ExitCode   *int     `json:"exit_code"`
	Signal     any      `json:"signal"`
	TimedOut   bool     `json:"timed_out"`
	Truncated  bool     `json:"truncated"`
	DurationMs *float64 `json:"duration_ms"`
}

func (p *Process) markStarted() { p.startOnce.Do(func() { close(p.started) }) }

func (p *Process) pump() {
	defer close(p.done)
	defer p.markStarted()
	defer p.resp.Body.Close()
	r := bufio.NewReaderSize(p.resp.Body, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			var ev execEvent
			if jerr := json.Unmarshal(line, &ev); jerr != nil {
				p.fail(newErr(KindStream, jerr, "%s: an event of the output stream is not JSON: %v", p.what, jerr))
				return
			}
			p.handle(ev)
		}
		if err != nil {
			p.mu.Lock()
			done := p.result != nil
			p.mu.Unlock()
			if done {
				return
			}
			if errors.Is(err, io.EOF) {
				p.fail(newErr(KindStream, err,
					"%s: the output stream ended without an exit event; the sandbox may have been deleted or restarted (see Status())", p.what))
			} else if errors.Is(err, context.DeadlineExceeded) {
				p.fail(newErr(KindTimeout, err, "%s: no exit within %s; pass a larger WithTimeout", p.what, httpTimeout(p.o.timeout)))
			} else {
				p.fail(newErr(KindStream, err, "%s: lost the connection to the output stream: %v; the process was killed with it", p.what, err))
			}
			return
		}
	}
}

func (p *Process) fail(err error) {
	p.mu.Lock()
	if p.err == nil && p.result == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func signalName(v any) string {
	switch s := v.(type) {
	case nil:
		return ""
	case string:
		return s
	case float64:
		return fmt.Sprintf("%d", int(s))
	}
	return fmt.Sprint(v)
}

func (p *Process) handle(ev execEvent) {
	switch ev.Type {
	case "start":
		p.mu.Lock()
		p.pid, p.processID = ev.PID, ev.ProcessID
		p.mu.Unlock()
		p.markStarted()
	case "stdout":
		p.mu.Lock()
		p.stdout.WriteString(ev.Data)
		p.mu.Unlock()
		if p.o.onStdout != nil {
			p.o.onStdout(ev.Data)
		}
	case "stderr":
		p.mu.Lock()
		p.stderr.WriteString(ev.Data)
		p.mu.Unlock()
		if p.o.onStderr != nil {
			p.o.onStderr(ev.Data)
		}
	case "exit":
		p.mu.Lock()
		res := &ExecutionResult{Stdout: p.stdout.String(), Stderr: p.stderr.String(), ExitCode: -1,
			Signal: signalName(ev.Signal), TimedOut: ev.TimedOut, Truncated: ev.Truncated, PID: p.pid}
		if ev.ExitCode != nil {
			res.ExitCode = *ev.ExitCode
		}
		if ev.DurationMs != nil {
			res.DurationMs = *ev.DurationMs
		}
		p.result = res
		p.mu.Unlock()
	}
}

// PID is the process's pid in the sandbox (0 before it started).
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// Stdout is the output so far.
func (p *Process) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// Stderr is the error output so far.
func (p *Process) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// Running is true until the process ended (or its stream was lost).
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the end and returns the result; a process past its own timeout gives a
// CommandTimeoutError with the result.
func (p *Process) Wait() (*ExecutionResult, error) {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return nil, p.err
	}
	if p.result.TimedOut {
		return p.result, &Error{Kind: KindCommandTimeout, Result: p.result,
			Message: fmt.Sprintf("%s: ran past its timeout of %s and was killed; the output so far is in Result", p.what, p.o.timeout)}
	}
	return p.result, nil
}

// Kill sends signal ("SIGKILL" when empty) to the process group.
func (p *Process) Kill(ctx context.Context, signal string) error {
	select {
	case <-p.started:
	case <-ctx.Done():
		return newErr(KindTimeout, ctx.Err(), "%s: not started yet", p.what)
	}
	if !p.Running() {
		return nil
	}
	p.mu.Lock()
	id := p.processID
	p.mu.Unlock()
	return p.commands.Kill(ctx, id, signal)
}

// ProcessInfo is one entry of sandboxd's process table.
type ProcessInfo struct {
	ID        int    `json:"id"`
	PID       int    `json:"pid"`
	Command   any    `json:"command"`
	Origin    string `json:"origin"`
	PTY       bool   `json:"pty"`
	Running   bool   `json:"running"`
	StartedAt string `json:"started_at"`
}

// List returns the processes sandboxd runs.
func (c *Commands) List(ctx context.Context) ([]ProcessInfo, error) {
	resp, err := c.s.send(ctx, request{method: http.MethodGet, path: "/v2/processes",
		what: fmt.Sprintf("listing processes of sandbox %s/%s", c.s.namespace, c.s.name)})
	if err != nil {
		return nil, err
	}
	var out struct {
		Processes []ProcessInfo `json:"processes"`
	}
	if err := readJSON(resp, "listing processes", &out); err != nil {
		return nil, err
	}
	return out.Processes, nil
}

// Kill sends signal ("SIGKILL" when empty) to sandboxd's process id (ProcessInfo.ID).
func (c *Commands) Kill(ctx context.Context, processID int, signal string) error {
	if signal == "" {
		signal = "SIGKILL"
	}
	if !strings.HasPrefix(strings.ToUpper(signal), "SIG") {
		signal = "SIG" + strings.ToUpper(signal)
	}
	resp, err := c.s.send(ctx, request{method: http.MethodPost, path: fmt.Sprintf("/v2/processes/%d/signal", processID),
		body: jsonBody(map[string]string{"signal": signal}), header: http.Header{"Content-Type": {"application/json"}},
		what: fmt.Sprintf("sending %s to process %d of sandbox %s/%s", signal, processID, c.s.namespace, c.s.name)})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
