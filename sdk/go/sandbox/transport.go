// The data plane of one sandbox: where a request goes (the router with its token and the
// X-Sandbox-* headers, the pod IP, or the port-forward tunnel), sending it with a bounded
// time, and turning failures and error answers into Errors that say what to do.

package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	headerSandboxID        = "X-Sandbox-ID"
	headerSandboxNamespace = "X-Sandbox-Namespace"
	headerSandboxPort      = "X-Sandbox-Port"
	headerSandboxPodIP     = "X-Sandbox-Pod-IP"
	headerSandboxTimeout   = "X-Sandbox-Timeout"
	userAgent              = "agent-sandbox-sdk-go"
)

// baseURL is where requests to the sandbox go, and whether they go through the router.
func (s *Sandbox) baseURL(ctx context.Context) (string, bool, error) {
	c := s.client
	switch c.mode {
	case ModeRouter:
		return c.routerURL, true, nil
	case ModePortForward:
		port, err := c.tunnel.port(ctx)
		if err != nil {
			return "", true, err
		}
		return fmt.Sprintf("http://127.0.0.1:%d", port), true, nil
	default:
		ip := s.podIPNow()
		if ip == "" {
			var err error
			if ip, err = s.refreshPodIP(ctx); err != nil {
				return "", false, err
			}
		}
		if ip == "" {
			return "", false, newErr(KindNotReady, nil,
				"sandbox %s/%s has no pod IP (suspended or not running); resume it or check Status()", s.namespace, s.name)
		}
		host := ip
		if strings.Contains(ip, ":") {
			host = "[" + ip + "]"
		}
		return fmt.Sprintf("http://%s:%d", host, c.opts.ServerPort), false, nil
	}
}

func (s *Sandbox) where() string {
	c := s.client
	switch c.mode {
	case ModeRouter:
		return "the sandbox router at " + c.routerURL
	case ModePortForward:
		return fmt.Sprintf("the sandbox router through a port-forward to Service %s/%s", c.opts.RouterNamespace, c.opts.RouterService)
	default:
		return fmt.Sprintf("sandbox %s/%s at %s:%d", s.namespace, s.name, s.podIPNow(), c.opts.ServerPort)
	}
}

type request struct {
	method string
	path   string
	query  url.Values
	body   []byte
	header http.Header
	// timeout bounds the whole exchange (0: the client's RequestTimeout); the router is told
	// it too (X-Sandbox-Timeout).
	timeout time.Duration
	// stream: the caller reads the body as it comes; the timeout then ends the read as well.
	what string
	ok   []int
}

// send performs the request and returns the response when its status is one of r.ok (default
// 200..299). The body must be closed; closing it also releases the request's context.
func (s *Sandbox) send(ctx context.Context, r request) (*http.Response, error) {
	if err := s.requireActive(); err != nil {
		return nil, err
	}
	timeout := r.timeout
	if timeout <= 0 {
		timeout = s.client.opts.RequestTimeout
	}
	idempotent := r.method == http.MethodGet || r.method == http.MethodHead || r.method == http.MethodPut || r.method == http.MethodDelete
	for attempt := 0; ; attempt++ {
		resp, err := s.sendOnce(ctx, r, timeout)
		if err != nil {
			var e *Error
			if attempt == 0 && idempotent && errors.As(err, &e) && e.Kind == KindConnection && s.client.mode == ModePodIP {
				if old := s.podIPNow(); func() bool { ip, _ := s.refreshPodIP(ctx); return ip != "" && ip != old }() {
					continue
				}
			}
			return nil, err
		}
		if okStatus(resp.StatusCode, r.ok) {
			return resp, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		// A pod IP that changed (a resume, a restart) shows as 502 from the router: retry once
		// with a fresh one, when the request cannot have reached a sandbox.
		if attempt == 0 && resp.StatusCode == http.StatusBadGateway && s.client.mode != ModePodIP &&
			(idempotent || bytes.Contains(body, []byte("Could not connect"))) {
			old := s.podIPNow()
			ip, rerr := s.refreshPodIP(ctx)
			if ip != "" && ip != old {
				continue
			}
			if e, ok := rerr.(*Error); ok && e.Kind == KindNotReady {
				e.Message = r.what + ": " + e.Message
				e.StatusCode = resp.StatusCode
				return nil, e
			}
		}
		return nil, s.httpError(resp.StatusCode, body, r.what, r.path)
	}
}

func okStatus(code int, ok []int) bool {
	if len(ok) == 0 {
		return code >= 200 && code < 300
	}
	for _, c := range ok {
		if c == code {
			return true
		}
	}
	return false
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (s *Sandbox) sendOnce(ctx context.Context, r request, timeout time.Duration) (*http.Response, error) {
	base, viaRouter, err := s.baseURL(ctx)
	if err != nil {
		return nil, err
	}
	u := base + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(rctx, r.method, u, body)
	if err != nil {
		cancel()
		return nil, newErr(KindConfig, err, "%s: bad URL %s: %v", r.what, u, err)
	}
	for k, vs := range r.header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("User-Agent", userAgent)
	if viaRouter {
		if err := s.routerHeaders(req.Header, timeout); err != nil {
			cancel()
			return nil, err
		}
	}
	resp, err := s.client.http.Do(req)
	if err != nil {
		cancel()
		return nil, s.transportError(ctx, err, r.what, timeout)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

func (s *Sandbox) routerHeaders(h http.Header, timeout time.Duration) error {
	c := s.client
	tok, err := c.token.get()
	if err != nil {
		return err
	}
	if tok != "" && c.mode == ModeRouter {
		h.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range c.opts.ExtraHeaders {
		h.Set(k, v)
	}
	h.Set(headerSandboxID, s.name)
	h.Set(headerSandboxNamespace, s.namespace)
	h.Set(headerSandboxPort, strconv.Itoa(c.opts.ServerPort))
	if ip := s.podIPNow(); ip != "" {
		h.Set(headerSandboxPodIP, ip)
	}
	if timeout > 0 && timeout < 365*24*time.Hour {
		h.Set(headerSandboxTimeout, strconv.Itoa(int(math.Ceil(timeout.Seconds()))))
	}
	return nil
}

// transportError: no answer at all.
func (s *Sandbox) transportError(ctx context.Context, err error, what string, timeout time.Duration) error {
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return newErr(KindTimeout, err, "%s: cancelled by the caller", what)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return newErr(KindTimeout, err, "%s: the caller's context deadline passed before sandbox %s/%s answered", what, s.namespace, s.name)
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return newErr(KindTimeout, err,
			"%s: sandbox %s/%s did not answer within %s; pass a larger timeout (WithTimeout) if the operation is slow",
			what, s.namespace, s.name, timeout)
	}
	var own *Error
	if errors.As(err, &own) {
		return err
	}
	msg := fmt.Sprintf("%s: cannot reach %s: %v.", what, s.where(), err)
	if s.client.hint != "" {
		msg += " " + s.client.hint
	}
	if s.client.mode == ModePortForward {
		s.client.tunnel.reset()
	}
	return &Error{Kind: KindConnection, Message: msg, Err: err}
}

// httpError: an error answer, from the router ({"detail"}) or from sandboxd ({"code","message"}).
func (s *Sandbox) httpError(status int, body []byte, what, path string) error {
	code, message := "", strings.TrimSpace(string(body))
	var j map[string]any
	if json.Unmarshal(body, &j) == nil {
		if d, ok := j["detail"]; ok {
			code, message = "ROUTER", fmt.Sprint(d)
		} else {
			if c, ok := j["code"].(string); ok {
				code = c
			}
			if m, ok := j["message"].(string); ok && m != "" {
				message = m
			}
		}
	}
	if status == 401 && code == "" && message == "" && s.client.mode != ModePodIP {
		code, message = "ROUTER", "Missing or invalid router token." // a HEAD answer has no body
	}
	e := &Error{Kind: KindRequest, StatusCode: status, Code: code}
	switch {
	case status == 401 && code == "ROUTER":
		message += " The router rejected the request's credentials: check the router token " +
			"(Options.RouterToken or RouterTokenFile, the routerTokenFile of endpoints.json, or the " +
			"Authorization of Options.ExtraHeaders)."
	case (status == 502 || status == 503) && code == "ROUTER":
		message += fmt.Sprintf(" The sandbox %s/%s is not answering: it may be suspended, restarting or gone; see Status().", s.namespace, s.name)
		e.Kind = KindNotReady
	case status == 504:
		message += " The sandbox did not answer in time; pass a larger timeout."
	}
	e.Message = fmt.Sprintf("%s: %d %s", what, status, message)
	return e
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps and structs of this package are encoded
	}
	return b
}

func readJSON(resp *http.Response, what string, v any) error {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return newErr(KindStream, err, "%s: the answer was cut off: %v", what, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return newErr(KindRequest, err, "%s: the answer is not the JSON expected: %v", what, err)
	}
	return nil
}
