// Terminals: an interactive PTY session in a sandbox over sandboxd's /v2/pty WebSocket
// (binary frames carry terminal bytes; text frames carry resize, signal and exit messages).

package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// PTYOptions configure a terminal.
type PTYOptions struct {
	// Command is a shell command line (default: an interactive bash or sh).
	Command string
	// Cols and Rows are the terminal's size (default 80×24).
	Cols, Rows int
	// Cwd is the starting directory.
	Cwd string
	// OnData, when set, receives the terminal's output as it comes (besides ReadUntil).
	OnData func([]byte)
}

// Terminal is a PTY session. Its output is buffered for ReadUntil and Output.
type Terminal struct {
	s    *Sandbox
	conn *websocket.Conn
	what string

	wmu sync.Mutex

	mu       sync.Mutex
	cond     *sync.Cond
	buf      bytes.Buffer
	exited   bool
	exitCode int
	err      error
	done     chan struct{}
}

// PTY starts a terminal; Close it when done.
func (s *Sandbox) PTY(ctx context.Context, o PTYOptions) (*Terminal, error) {
	if err := s.requireActive(); err != nil {
		return nil, err
	}
	q := url.Values{}
	if o.Command != "" {
		q.Set("command", o.Command)
	}
	if o.Cols > 0 {
		q.Set("cols", strconv.Itoa(o.Cols))
	}
	if o.Rows > 0 {
		q.Set("rows", strconv.Itoa(o.Rows))
	}
	if o.Cwd != "" {
		q.Set("cwd", o.Cwd)
	}
	what := fmt.Sprintf("opening a terminal in sandbox %s/%s", s.namespace, s.name)
	base, viaRouter, err := s.baseURL(ctx)
	if err != nil {
		return nil, err
	}
	u := "ws" + strings.TrimPrefix(base, "http") + "/v2/pty"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	h := http.Header{"User-Agent": {userAgent}}
	if viaRouter {
		if err := s.routerHeaders(h, 0); err != nil {
			return nil, err
		}
	}
	d := websocket.Dialer{HandshakeTimeout: s.client.opts.RequestTimeout}
	conn, resp, err := d.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			return nil, s.httpError(resp.StatusCode, body.Bytes(), what, "/v2/pty")
		}
		return nil, s.transportError(ctx, err, what, s.client.opts.RequestTimeout)
	}
	t := &Terminal{s: s, conn: conn, what: what, done: make(chan struct{}), exitCode: -1}
	t.cond = sync.NewCond(&t.mu)
	go t.pump(o.OnData)
	return t, nil
}

func (t *Terminal) pump(onData func([]byte)) {
	defer close(t.done)
	for {
		typ, data, err := t.conn.ReadMessage()
		if err != nil {
			t.mu.Lock()
			if !t.exited && t.err == nil {
				t.err = newErr(KindStream, err, "%s: the terminal's connection ended before its exit message: %v", t.what, err)
			}
			t.cond.Broadcast()
			t.mu.Unlock()
			return
		}
		if typ == websocket.BinaryMessage {
			if onData != nil {
				onData(data)
			}
			t.mu.Lock()
			t.buf.Write(data)
			t.cond.Broadcast()
			t.mu.Unlock()
			continue
		}
		var msg struct {
			Type     string `json:"type"`
			ExitCode *int   `json:"exit_code"`
		}
		if json.Unmarshal(data, &msg) == nil && msg.Type == "exit" {
			t.mu.Lock()
			t.exited = true
			if msg.ExitCode != nil {
				t.exitCode = *msg.ExitCode
			}
			t.cond.Broadcast()
			t.mu.Unlock()
		}
	}
}

// Write sends input to the terminal.
func (t *Terminal) Write(p []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if err := t.conn.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, newErr(KindStream, err, "%s: writing to the terminal: %v", t.what, err)
	}
	return len(p), nil
}

func (t *Terminal) control(v any) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if err := t.conn.WriteMessage(websocket.TextMessage, jsonBody(v)); err != nil {
		return newErr(KindStream, err, "%s: %v", t.what, err)
	}
	return nil
}

// Resize changes the terminal's size.
func (t *Terminal) Resize(cols, rows int) error {
	return t.control(map[string]any{"type": "resize", "cols": cols, "rows": rows})
}

// Signal sends a signal ("SIGINT", ...) to the terminal's process.
func (t *Terminal) Signal(sig string) error {
	return t.control(map[string]any{"type": "signal", "signal": sig})
}

// Output is everything the terminal printed so far.
func (t *Terminal) Output() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

// ReadUntil waits until the output (since the last ReadUntil) contains marker, and returns it
// up to and including the marker.
func (t *Terminal) ReadUntil(marker string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() { t.mu.Lock(); t.cond.Broadcast(); t.mu.Unlock() })
	defer timer.Stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if i := strings.Index(t.buf.String(), marker); i >= 0 {
			out := string(t.buf.Next(i + len(marker)))
			return out, nil
		}
		if t.exited || t.err != nil {
			return "", newErr(KindStream, t.err, "%s: the terminal ended before printing %q; it printed %q", t.what, marker, t.buf.String())
		}
		if !time.Now().Before(deadline) {
			return "", newErr(KindTimeout, nil, "%s: %q did not appear within %s; the output so far: %q", t.what, marker, timeout, t.buf.String())
		}
		t.cond.Wait()
	}
}

// Wait waits for the terminal's process to exit and returns its exit code.
func (t *Terminal) Wait(timeout time.Duration) (int, error) {
	select {
	case <-t.done:
	case <-time.After(timeout):
		return -1, newErr(KindTimeout, nil, "%s: the terminal's process did not exit within %s", t.what, timeout)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.exited {
		if t.err == nil {
			t.err = newErr(KindStream, nil, "%s: the terminal closed without an exit message", t.what)
		}
		return -1, t.err
	}
	return t.exitCode, nil
}

// Close ends the session (the process is killed if it still runs).
func (t *Terminal) Close() error {
	_ = t.conn.Close()
	<-t.done
	return nil
}
