package prober

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/probe-agent/probe-agent/service"
)

// GRPC calls grpc.health.v1.Health/Check; only SERVING is a success and every error is
// a failure, as with the kubelet and grpc_health_probe.
func GRPC(ctx context.Context, t Target, c *service.Check, s Settings) Result {
	g := c.GRPC
	addr := net.JoinHostPort(hostOr(g.Host, t), strconv.Itoa(g.Port))
	var dialErr atomic.Pointer[error] // written by gRPC's dialing goroutine
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent(s.userAgent()),
		grpc.WithMaxHeaderListSize(MaxHeaderBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxHeaderBytes)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			c, err := dial(ctx, t, "tcp", a, lingerSeconds)
			if err != nil {
				dialErr.Store(&err)
			}
			return c, err
		}))
	if err != nil {
		return Result{Outcome: Unknown, Output: err.Error()}
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: g.Service})
	if err != nil {
		if de := dialErr.Load(); de != nil && IsUnavailable(*de) {
			return Result{Outcome: Unknown, Output: (*de).Error()}
		}
		return Result{Outcome: Failure, Output: errText(ctx, err)}
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return Result{Outcome: Failure, Output: "service unhealthy (responded with " + s.String() + ")"}
	}
	return Result{Outcome: Success, Output: "SERVING"}
}
