// Errors: the one error type this package returns, its kinds (the same names as the Python and
// TypeScript SDKs and the shared wire vectors use), and sentinels for errors.Is.

package sandbox

import (
	"errors"
	"fmt"
)

// Kind classifies an Error. The names are shared by every SDK of this project and by the
// wire vectors in sdk/vectors.
type Kind string

const (
	// KindConnection: nothing answers where the API server, the router or the sandbox should
	// be (no `agent-sandbox up` running, a kubeconfig pointing nowhere, the router down).
	KindConnection Kind = "ConnectionError"
	// KindConfig: configuration that cannot work (a missing kubeconfig or endpoints file, a
	// bad URL, an invalid option).
	KindConfig Kind = "ConfigError"
	// KindRequest: the server answered with an error status (StatusCode, Code).
	KindRequest Kind = "RequestError"
	// KindTimeout: something did not happen within the time asked for.
	KindTimeout Kind = "TimeoutError"
	// KindCommandTimeout: a command or a cell ran past its timeout and was killed; Result
	// holds the output it produced. errors.Is(err, ErrTimeout) holds for it too.
	KindCommandTimeout Kind = "CommandTimeoutError"
	// KindNotFound: the claim or the Sandbox does not exist (any more).
	KindNotFound Kind = "NotFoundError"
	// KindNotReady: the sandbox does not answer (suspended, restarting, gone) or the handle
	// is closed.
	KindNotReady Kind = "NotReadyError"
	// KindPath: a file path outside sandboxd's root.
	KindPath Kind = "PathError"
	// KindClaimFailed: the controller rejected the claim for good.
	KindClaimFailed Kind = "ClaimFailedError"
	// KindWarmPoolNotFound: the SandboxWarmPool does not exist.
	KindWarmPoolNotFound Kind = "WarmPoolNotFoundError"
	// KindTemplateNotFound: the SandboxTemplate does not exist.
	KindTemplateNotFound Kind = "TemplateNotFoundError"
	// KindPortForward: the tunnel through the API server could not start, or it died.
	KindPortForward Kind = "PortForwardError"
	// KindTooLarge: a file is larger than the limit the reader gave (WithMaxBytes).
	KindTooLarge Kind = "TooLargeError"
	// KindStream: a streamed answer (exec, run_code, PTY) ended before its last event.
	KindStream Kind = "StreamError"
)

// Error is every error this package returns. Message says what happened, on which object,
// and what to do.
type Error struct {
	Kind    Kind
	Message string
	// StatusCode is the HTTP status of an error answer (KindRequest, some KindNotReady).
	StatusCode int
	// Code is the error code of the answer's body: sandboxd's NOT_FOUND, CONFLICT, ...;
	// ROUTER for the router's own errors; the Kubernetes reason for the API server's.
	Code string
	// Result is the output a command produced before it was killed (KindCommandTimeout).
	Result *ExecutionResult
	// Err is the underlying cause, if any.
	Err error
}

func (e *Error) Error() string { return e.Message }

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinels below by kind; a command timeout is also a timeout.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || !t.sentinel() {
		return false
	}
	return t.Kind == e.Kind || (t.Kind == KindTimeout && e.Kind == KindCommandTimeout)
}

func (e *Error) sentinel() bool { return e.Message == "" && e.Err == nil && e.StatusCode == 0 }

// Sentinels for errors.Is(err, sandbox.ErrNotFound) and the like.
var (
	ErrConnection       = &Error{Kind: KindConnection}
	ErrConfig           = &Error{Kind: KindConfig}
	ErrRequest          = &Error{Kind: KindRequest}
	ErrTimeout          = &Error{Kind: KindTimeout}
	ErrCommandTimeout   = &Error{Kind: KindCommandTimeout}
	ErrNotFound         = &Error{Kind: KindNotFound}
	ErrNotReady         = &Error{Kind: KindNotReady}
	ErrPath             = &Error{Kind: KindPath}
	ErrClaimFailed      = &Error{Kind: KindClaimFailed}
	ErrWarmPoolNotFound = &Error{Kind: KindWarmPoolNotFound}
	ErrTemplateNotFound = &Error{Kind: KindTemplateNotFound}
	ErrPortForward      = &Error{Kind: KindPortForward}
	ErrStream           = &Error{Kind: KindStream}
	ErrTooLarge         = &Error{Kind: KindTooLarge}
)

func newErr(kind Kind, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...), Err: cause}
}

// KindOf returns the Kind of err, or "" when it is not this package's.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}
