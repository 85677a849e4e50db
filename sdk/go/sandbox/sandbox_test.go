// Integration tests against the live `agent-sandbox up`: claims, commands (streamed and in
// the background), files, run_code, terminals, suspend and resume, the three connection
// modes, and the error paths (no server, wrong pool, timeouts, a deleted sandbox, an
// interrupted stream).

package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRunStreamsOutput(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	var mu sync.Mutex
	var chunks []string
	var firstAt time.Time
	start := time.Now()
	r, err := shared.Run(ctx, "echo one; sleep 1.5; echo two; echo err >&2",
		OnStdout(func(s string) {
			mu.Lock()
			if firstAt.IsZero() {
				firstAt = time.Now()
			}
			chunks = append(chunks, s)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	if r.Stdout != "one\ntwo\n" || r.Stderr != "err\n" || r.ExitCode != 0 || !r.OK() {
		t.Fatalf("result %+v", r)
	}
	if len(chunks) < 2 {
		t.Fatalf("output came in %d chunks, want it streamed: %q", len(chunks), chunks)
	}
	if firstAt.Sub(start) >= 1400*time.Millisecond {
		t.Fatalf("the first line came after %s, not before the sleep ended", firstAt.Sub(start))
	}
}

func TestBackgroundProcessKill(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	p, err := shared.Commands().Start(ctx, "echo ready; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() == 0 {
		t.Fatal("no pid after Start")
	}
	procs, err := shared.Commands().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, pi := range procs {
		if pi.PID == p.PID() && pi.Running {
			found = true
		}
	}
	if !found {
		t.Fatalf("pid %d not in the process table %+v", p.PID(), procs)
	}
	if err := p.Kill(ctx, ""); err != nil {
		t.Fatal(err)
	}
	r, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 137 || r.Stdout != "ready\n" {
		t.Fatalf("killed process: %+v", r)
	}
}

func TestCommandTimeout(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	start := time.Now()
	r, err := shared.Run(ctx, "echo partial; sleep 30", WithTimeout(time.Second))
	if !errors.Is(err, ErrCommandTimeout) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("want a command timeout, got %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
	if r == nil || r.Stdout != "partial\n" || !r.TimedOut {
		t.Fatalf("result %+v", r)
	}
	var e *Error
	errors.As(err, &e)
	if e.Result != r || !strings.Contains(e.Message, "timeout") {
		t.Fatalf("error %+v", e)
	}
}

func TestCallerContextEndsCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := shared.Run(ctx, "sleep 30")
	if !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrStream) {
		t.Fatalf("want a timeout, got %T %v", err, err)
	}
}

func TestFilesRoundTripLarge(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	data := make([]byte, 8<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := shared.Write(ctx, "go-tests/big.bin", data, WithMode("0600")); err != nil {
		t.Fatal(err)
	}
	got, err := shared.Read(ctx, "go-tests/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, wrote %d; they differ", len(got), len(data))
	}
	entries, err := shared.List(ctx, "go-tests")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name != "big.bin" || entries[0].Size != int64(len(data)) ||
		entries[0].Mode != "0600" || entries[0].Modified.IsZero() {
		t.Fatalf("entries %+v", entries)
	}
	if _, err := shared.List(ctx, "go-tests/big.bin"); KindOf(err) != KindRequest {
		t.Fatalf("listing a file: %v", err)
	}
	if err := shared.Files().Delete(ctx, "go-tests", false); KindOf(err) != KindRequest || err.(*Error).Code != "CONFLICT" {
		t.Fatalf("deleting a non-empty directory without recursive: %v", err)
	}
	if err := shared.Files().Delete(ctx, "go-tests", true); err != nil {
		t.Fatal(err)
	}
	if ok, err := shared.Exists(ctx, "go-tests"); err != nil || ok {
		t.Fatalf("exists after delete: %v %v", ok, err)
	}
	if err := shared.Write(ctx, "", nil); KindOf(err) != KindPath {
		t.Fatalf("empty path: %v", err)
	}
}

func TestRunCodeKeepsState(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	if _, err := shared.RunCode(ctx, "import statistics\nvalues = [1, 2, 6]", WithContext("go-ctx")); err == nil {
		t.Fatal("an unknown named context should be refused")
	} else if e := err.(*Error); e.StatusCode != 404 {
		t.Fatalf("unknown context: %v", err)
	}
	if _, err := shared.RunCode(ctx, "import statistics\nvalues = [1, 2, 6]"); err != nil {
		t.Fatal(err)
	}
	r, err := shared.RunCode(ctx, "statistics.mean(values)")
	if err != nil {
		t.Fatal(err)
	}
	if r.Text() != "3" || r.Status != "ok" {
		t.Fatalf("result %+v", r)
	}
	r, err = shared.RunCode(ctx, "import time\ntime.sleep(30)", WithTimeout(time.Second))
	if !errors.Is(err, ErrCommandTimeout) || r.Status != "timeout" {
		t.Fatalf("cell timeout: %v %+v", err, r)
	}
	r, err = shared.RunCode(ctx, "len(values)")
	if err != nil || r.Text() != "3" {
		t.Fatalf("state after an interrupted cell: %v %+v", err, r)
	}
	cc, err := shared.Code().CreateContext(ctx, "python", CodeContextOptions{ID: "go-ctx"})
	if err != nil || cc.ID != "go-ctx" || cc.Language != "python" {
		t.Fatalf("create context: %v %+v", err, cc)
	}
	if _, err := shared.RunCode(ctx, "z = 5", WithContext("go-ctx")); err != nil {
		t.Fatal(err)
	}
	if r, err := shared.RunCode(ctx, "z * 2", WithContext("go-ctx")); err != nil || r.Text() != "10" {
		t.Fatalf("named context: %v %+v", err, r)
	}
	if r, err := shared.RunCode(ctx, "'z' in globals()"); err != nil || r.Text() != "False" {
		t.Fatalf("the default context sees the named one's state: %v %+v", err, r)
	}
	if err := shared.Code().Restart(ctx, "go-ctx"); err != nil {
		t.Fatal(err)
	}
	if r, err := shared.RunCode(ctx, "'z' in globals()", WithContext("go-ctx")); err != nil || r.Text() != "False" {
		t.Fatalf("after restart: %v %+v", err, r)
	}
	list, err := shared.Code().ListContexts(ctx)
	if err != nil || !func() bool {
		for _, c := range list {
			if c.ID == "go-ctx" {
				return true
			}
		}
		return false
	}() {
		t.Fatalf("list: %v %+v", err, list)
	}
	if err := shared.Code().DeleteContext(ctx, "go-ctx"); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.RunCode(ctx, "1", WithContext("go-ctx")); KindOf(err) != KindRequest {
		t.Fatalf("a deleted context: %v", err)
	}
	r, err = shared.RunCode(ctx, "echo $((6*7))", WithLanguage("bash"))
	if err != nil || strings.TrimSpace(r.Stdout) != "42" {
		t.Fatalf("bash cell: %v %+v", err, r)
	}
}

func TestPTY(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	term, err := shared.PTY(ctx, PTYOptions{Command: "/bin/sh", Cols: 100, Rows: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if _, err := term.Write([]byte("stty size; echo pty-$((40+2))\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := term.ReadUntil("pty-42", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(term.Output(), "") {
		t.Fatal("unreachable")
	}
	if err := term.Resize(120, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := term.Write([]byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := term.ReadUntil("40 120", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := term.Write([]byte("exit 5\n")); err != nil {
		t.Fatal(err)
	}
	code, err := term.Wait(10 * time.Second)
	if err != nil || code != 5 {
		t.Fatalf("exit %d %v", code, err)
	}
}

func TestModes(t *testing.T) {
	for _, mode := range []Mode{ModeRouter, ModePodIP, ModePortForward} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := testCtx(t, time.Minute)
			c := newTestClient(t, Options{Mode: mode})
			if c.Mode() != mode {
				t.Fatalf("mode %s", c.Mode())
			}
			sb, err := c.GetSandbox(ctx, shared.ClaimName(), "")
			if err != nil {
				t.Fatal(err)
			}
			r, err := sb.Run(ctx, "echo via-"+string(mode))
			if err != nil {
				t.Fatal(err)
			}
			if r.Stdout != "via-"+string(mode)+"\n" {
				t.Fatalf("stdout %q", r.Stdout)
			}
			if err := sb.Write(ctx, "mode-"+string(mode), []byte("x")); err != nil {
				t.Fatal(err)
			}
			if ok, err := sb.Exists(ctx, "mode-"+string(mode)); err != nil || !ok {
				t.Fatalf("exists: %v %v", ok, err)
			}
		})
	}
}

func TestSuspendResume(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newTestClient(t, Options{})
	sb, err := c.CreateSandbox(ctx, testPool, "", ClaimOptions{Labels: map[string]string{"suite": "go"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Write(ctx, "kept.txt", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := sb.Suspend(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if s, err := sb.IsSuspended(ctx); err != nil || !s {
		t.Fatalf("suspended: %v %v", s, err)
	}
	if _, err := sb.Run(ctx, "true", WithTimeout(5*time.Second)); !errors.Is(err, ErrNotReady) {
		t.Fatalf("a suspended sandbox should not answer: %v", err)
	}
	if err := sb.Resume(ctx, 0); err != nil {
		t.Fatal(err)
	}
	st, _, err := sb.Status(ctx)
	if err != nil || st != StatusReady {
		t.Fatalf("status %s %v", st, err)
	}
	r, err := sb.Run(ctx, "echo resumed")
	if err != nil || r.Stdout != "resumed\n" {
		t.Fatalf("after resume: %v %+v", err, r)
	}
}

func TestSandboxDeletedUnderCommand(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := newTestClient(t, Options{})
	sb, err := c.CreateSandbox(ctx, testPool, "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := sb.Commands().Start(ctx, "echo begun; sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	// Delete the sandbox under the running command: its stream must end (the command killed,
	// or the stream cut), never hang.
	if err := c.kube.deleteClaim(ctx, sb.Namespace(), sb.ClaimName()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("the stream did not end after the sandbox was deleted")
	}
	r, err := p.Wait()
	if err == nil && r.ExitCode == 0 {
		t.Fatalf("the command of a deleted sandbox ended well: %+v", r)
	}
	if err != nil && !errors.Is(err, ErrStream) {
		t.Fatalf("want a stream error or a killed command, got %T %v", err, err)
	}
	st, _, err := sb.Status(ctx)
	for i := 0; i < 100 && st != StatusNotFound && err == nil; i++ {
		time.Sleep(100 * time.Millisecond)
		st, _, err = sb.Status(ctx)
	}
	if err != nil || st != StatusNotFound {
		t.Fatalf("status after delete: %s %v", st, err)
	}
	// Its Pod may answer while it terminates; then calls are refused. The first one may be
	// slow: the router tries the stale pod IP it is given (connection attempts to an address
	// nobody holds, retried); the SDK then forgets that address, so later calls fail fast.
	for i := 0; ; i++ {
		start := time.Now()
		_, err := sb.Run(ctx, "true", WithTimeout(40*time.Second))
		if errors.Is(err, ErrNotReady) {
			if !strings.Contains(err.Error(), "does not exist") || time.Since(start) > 35*time.Second {
				t.Fatalf("a command in a deleted sandbox, after %s: %v", time.Since(start), err)
			}
			break
		}
		if err != nil || i > 150 {
			t.Fatalf("a command in a deleted sandbox: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	start := time.Now()
	if _, err := sb.Run(ctx, "true"); !errors.Is(err, ErrNotReady) || time.Since(start) > 5*time.Second {
		t.Fatalf("again, after %s: %v", time.Since(start), err)
	}
	if sb.PodIP() != "" {
		t.Fatalf("the deleted sandbox's pod IP %s is still used", sb.PodIP())
	}
}

// cutProxy forwards TCP connections to target and cuts them all when cut is called.
func cutProxy(t *testing.T, target string) (addr string, cut func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	cut = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	t.Cleanup(func() { ln.Close(); cut() })
	return ln.Addr().String(), cut
}

func TestInterruptedStream(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	router, _ := routerInfo(t)
	addr, cut := cutProxy(t, strings.TrimPrefix(router, "http://"))
	c := newTestClient(t, Options{RouterURL: "http://" + addr})
	sb := c.SandboxByName(shared.Namespace(), shared.Name())
	got := make(chan struct{}, 1)
	p, err := sb.Commands().Start(ctx, "echo begun; sleep 30", OnStdout(func(string) { got <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no output")
	}
	cut()
	_, err = p.Wait()
	if !errors.Is(err, ErrStream) || !strings.Contains(err.Error(), "sleep 30") {
		t.Fatalf("want a stream error naming the command, got %T %v", err, err)
	}
	if p.Stdout() != "begun\n" {
		t.Fatalf("output before the cut: %q", p.Stdout())
	}
	// The same cut during a cell.
	done := make(chan error, 1)
	go func() { _, err := sb.RunCode(ctx, "import time\nprint('x', flush=True)\ntime.sleep(30)"); done <- err }()
	time.Sleep(1 * time.Second)
	cut()
	select {
	case err := <-done:
		if !errors.Is(err, ErrStream) {
			t.Fatalf("cell: want a stream error, got %T %v", err, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the cell did not end after its stream was cut")
	}
}

func TestWrongTokenAndNoRouter(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	c := newTestClient(t, Options{RouterToken: "wrong"})
	sb := c.SandboxByName("", shared.Name())
	_, err := sb.Run(ctx, "true")
	var e *Error
	if !errors.As(err, &e) || e.StatusCode != 401 || !strings.Contains(e.Message, "router token") {
		t.Fatalf("wrong token: %v", err)
	}
	c2 := newTestClient(t, Options{RouterURL: noServer})
	_, err = c2.SandboxByName("", shared.Name()).Read(ctx, "x")
	if !errors.Is(err, ErrConnection) || !strings.Contains(err.Error(), "agent-sandbox up") {
		t.Fatalf("no router: %v", err)
	}
}

func TestNoServer(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewClient(context.Background(), Options{DataDir: dir}); !errors.Is(err, ErrConnection) ||
		!strings.Contains(err.Error(), "agent-sandbox up") {
		t.Fatalf("no endpoints.json: %v", err)
	}
	// endpoints.json left from an earlier run: the API server's port answers nothing.
	ep, err := os.ReadFile(filepath.Join(testDataDir, "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(ep, &m)
	m["apiServer"] = "https://127.0.0.1:9"
	_ = os.WriteFile(filepath.Join(dir, "endpoints.json"), jsonBody(m), 0o600)
	c := newTestClient(t, Options{DataDir: dir})
	start := time.Now()
	_, err = c.CreateSandbox(testCtx(t, time.Minute), testPool, "", ClaimOptions{Timeout: 5 * time.Second})
	if !errors.Is(err, ErrConnection) || !strings.Contains(err.Error(), "agent-sandbox up") {
		t.Fatalf("API server down: %T %v", err, err)
	}
	if time.Since(start) > 6*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
}

func TestClaimErrors(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	c := newTestClient(t, Options{})
	_, err := c.CreateSandbox(ctx, "no-such-pool", "", ClaimOptions{Timeout: 20 * time.Second})
	if !errors.Is(err, ErrWarmPoolNotFound) || !strings.Contains(err.Error(), testPool) {
		t.Fatalf("missing pool: %v", err)
	}
	if _, err := c.CreateSandbox(ctx, "Bad_Name", ""); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad pool name: %v", err)
	}
	if _, err := c.GetSandbox(ctx, "no-such-claim", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing claim: %v", err)
	}
	if len(c.ActiveSandboxes()) != 0 {
		t.Fatalf("a failed claim is held: %v", c.ActiveSandboxes())
	}
}

func TestClaimTimeoutDeletesClaim(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	c := newTestClient(t, Options{})
	start := time.Now()
	_, err := c.CreateSandbox(ctx, testPool, "", ClaimOptions{Timeout: time.Millisecond, ClaimName: ""})
	if err == nil {
		t.Skip("the claim was ready within a millisecond")
	}
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("want a timeout, got %T %v", err, err)
	}
	if time.Since(start) > 15*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
}
