// Package prober runs health checks: one file per method (http.go, tcp.go, exec.go,
// grpc.go) behind one function type, the kubelet's threshold state machine (state.go),
// and the Manager that schedules probes on a timer wheel and reports transitions.
package prober

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/probe-agent/probe-agent/service"
)

// Outcome is what one probe found, in the kubelet's vocabulary.
type Outcome int8

// The outcomes. Warning counts as a success and is logged; Unknown means the probe could
// not run (the container is gone, the runtime failed) and never counts as a failure.
const (
	Unknown Outcome = iota
	Success
	Warning
	Failure
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Warning:
		return "warning"
	case Failure:
		return "failure"
	}
	return "error"
}

// Result is the outcome of one probe with a short, human-readable output. Output never
// holds an HTTP response body.
type Result struct {
	Outcome Outcome
	Output  string
}

// Target is the container as a probe method sees it; each runtime provides one.
type Target interface {
	// Host is the address dialled when a check names no host.
	Host() string
	// DialContext connects to address from where the container's network is reachable.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// Exec runs argv where the container runs, with its environment, writing stdout and
	// stderr to out. It returns the exit code; a command that cannot be started returns
	// 126 or 127 with the reason written to out, as a shell would. When ctx ends it kills
	// the command with everything it started and returns ctx.Err() without waiting for
	// children that still hold the output open.
	Exec(ctx context.Context, argv []string, out io.Writer) (int, error)
}

// An error from a Target that has an Unavailable() bool method returning true means the
// container could not be reached at all (it vanished, the runtime is down): the probe
// result is Unknown and is retried, never counted as a failure.
type unavailable interface{ Unavailable() bool }

// IsUnavailable reports whether err says that the target itself is unavailable.
func IsUnavailable(err error) bool {
	var u unavailable
	return errors.As(err, &u) && u.Unavailable()
}

// Settings are the agent's own for every probe, as opposed to a check's.
type Settings struct {
	// UserAgent is sent by HTTP and gRPC probes unless a check sets the header
	// (default DefaultUserAgent).
	UserAgent string
}

// DefaultUserAgent is the User-Agent of a build that was given no version.
const DefaultUserAgent = "probe-agent/dev"

func (s Settings) userAgent() string {
	if s.UserAgent == "" {
		return DefaultUserAgent
	}
	return s.UserAgent
}

// Func is one probe method.
type Func func(ctx context.Context, t Target, c *service.Check, s Settings) Result

// methods maps a check's method name to its implementation.
var methods = map[string]Func{
	service.MethodHTTPGet:   HTTP,
	service.MethodTCPSocket: TCP,
	service.MethodExec:      Exec,
	service.MethodGRPC:      GRPC,
}

// Run runs check c against t once, bounded by the check's timeout.
func Run(ctx context.Context, t Target, c *service.Check, s Settings) Result {
	fn, ok := methods[c.Method()]
	if !ok {
		return Result{Outcome: Unknown, Output: "no probe method " + c.Method()}
	}
	ctx, cancel := context.WithTimeout(ctx, c.TimeoutSeconds.D())
	defer cancel()
	return fn(ctx, t, c, s)
}

// MaxOutput caps what a probe keeps of a command's output or an HTTP body (10 KiB).
const MaxOutput = 10 << 10

// cappedBuffer keeps the first MaxOutput bytes written to it and discards the rest. It
// is safe for concurrent writers.
type cappedBuffer struct {
	mu        sync.Mutex
	buf       []byte
	truncated bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := MaxOutput - len(b.buf)
	if len(p) > room {
		b.truncated = true
		b.buf = append(b.buf, p[:max(room, 0)]...)
	} else {
		b.buf = append(b.buf, p...)
	}
	return len(p), nil
}

// Reset empties the buffer (a runtime that retries a command another way starts over).
func (b *cappedBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf, b.truncated = b.buf[:0], false
}

func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := string(b.buf)
	if b.truncated {
		s += "... (truncated)"
	}
	return s
}

// errText is err's message, or the result of a context's end stated plainly.
func errText(ctx context.Context, err error) string {
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
		return "timed out: " + err.Error()
	}
	return err.Error()
}
