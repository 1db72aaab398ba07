package prober

import (
	"context"
	"net"
	"strconv"

	"github.com/probe-agent/probe-agent/service"
)

// TCP succeeds when a TCP connection to the check's port is established.
func TCP(ctx context.Context, t Target, c *service.Check, _ Settings) Result {
	s := c.TCPSocket
	addr := net.JoinHostPort(hostOr(s.Host, t), strconv.Itoa(s.Port))
	// Nothing is sent: close with a reset (SO_LINGER 0), which costs a fraction of an
	// orderly close and leaves no TIME_WAIT socket on either side.
	conn, err := dial(ctx, t, "tcp", addr, 0)
	if err != nil {
		return dialFailure(ctx, err)
	}
	conn.Close()
	return Result{Outcome: Success, Output: "connected to " + addr}
}

func hostOr(host string, t Target) string {
	if host != "" {
		return host
	}
	return t.Host()
}

// lingerSeconds is the kubelet's probe dialer's SO_LINGER for connections that carry a
// request, so that probe sockets do not pile up in TIME_WAIT.
const lingerSeconds = 1

// dial connects through the target and sets SO_LINGER to linger seconds.
func dial(ctx context.Context, t Target, network, addr string, linger int) (net.Conn, error) {
	conn, err := t.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(linger)
	}
	return conn, nil
}

func dialFailure(ctx context.Context, err error) Result {
	if IsUnavailable(err) {
		return Result{Outcome: Unknown, Output: err.Error()}
	}
	return Result{Outcome: Failure, Output: errText(ctx, err)}
}
