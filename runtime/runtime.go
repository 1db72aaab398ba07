// Package runtime is what the agent needs from a container runtime: the Runtime
// interface, container identity and events, the restart policy and the kubelet's
// crash-loop back-off. The policy and back-off are pure.
package runtime

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/service"
)

// Identity names a container for people and metrics. Namespace and Pod are empty
// outside Kubernetes.
type Identity struct {
	// Name is the container's stable key in the agent (the status API's name).
	Name      string
	Namespace string
	Pod       string
	Container string
}

// Container is a container the runtime knows, with the checks that apply to it.
type Container struct {
	Identity
	Spec *service.Container
	// Owned says the agent may restart the container in place; containers that belong
	// to someone else are only stopped, and ManagedBy names who restarts them.
	Owned     bool
	ManagedBy string
	// Err says why the container's checks could not be read (a bad label); Spec is
	// nil then and the container is reported, not probed.
	Err error
	// GPUs is what the container's spec says about the GPUs it uses.
	GPUs gpu.Request
}

// EventType says what happened to a container.
type EventType int

// The events a runtime reports.
const (
	// Added: a container became known (configured or discovered). When it is already
	// running, the event carries the instance as Started does, so that it is never
	// seen known but not running.
	Added EventType = iota
	// Started: a new instance of the container is running.
	Started
	// Exited: the instance stopped, with ExitCode.
	Exited
	// StartFailed: the container could not be started; Err says why.
	StartFailed
	// Removed: the container is gone for good.
	Removed
)

func (t EventType) String() string {
	return [...]string{"added", "started", "exited", "start_failed", "removed"}[t]
}

// Event is one thing that happened to a container.
type Event struct {
	Type EventType
	Name string
	// Container is set on Added.
	Container *Container
	// Instance names the run of the container (set on Started, Exited, StartFailed);
	// ID is the runtime's identifier of the running container (set on Started).
	Instance string
	ID       string
	PID      int
	Time     time.Time
	ExitCode int
	// Reason, on Exited, says why the instance ended when the runtime knows better than
	// an exit code: "deleted" for a container removed behind the agent's back.
	Reason string
	Err    error
	// Adopted is set on Started when the instance was already running when the agent
	// found it.
	Adopted bool
}

// Target is how probes reach a container; it has the methods of prober.Target.
type Target interface {
	Host() string
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Exec(ctx context.Context, argv []string, out io.Writer) (int, error)
}

// Runtime runs or watches containers.
type Runtime interface {
	// Run reports events for every container until ctx ends. A runtime that owns its
	// containers' processes stops them before it returns.
	Run(ctx context.Context, events chan<- Event) error
	// Start starts a new instance of a stopped container.
	Start(ctx context.Context, name string) error
	// Stop sends SIGTERM to the container, SIGKILL after grace, and returns once it
	// has exited.
	Stop(ctx context.Context, name string, grace time.Duration) error
	// Target returns how to probe the container's current instance.
	Target(name string) (Target, error)
	// Connected reports whether the runtime is reachable.
	Connected() bool
}

// ShouldRestart applies a restart policy. A container stopped because a liveness or
// startup probe failed is restarted unless the policy is Never, as the kubelet does;
// one that exited by itself is restarted always under Always and on a non-zero code
// under OnFailure.
func ShouldRestart(p service.RestartPolicy, exitCode int, stoppedByProbe bool) bool {
	switch p {
	case service.RestartNever:
		return false
	case service.RestartOnFailure:
		return stoppedByProbe || exitCode != 0
	}
	return true
}

// Default back-off bounds, as the kubelet's CrashLoopBackOff.
const (
	DefaultBackoff    = 10 * time.Second
	DefaultBackoffMax = 300 * time.Second
)

// Backoff is the kubelet's crash-loop back-off for one container: the first restart
// is immediate, the next ones wait Initial, doubling up to Max, and it starts over
// once the container ran for twice Max (10 minutes by default) without a crash.
type Backoff struct {
	Initial, Max time.Duration

	delay time.Duration
	last  time.Time
}

// Next records an exit at finishedAt and returns how long to wait before restarting.
func (b *Backoff) Next(finishedAt time.Time) time.Duration {
	if b.last.IsZero() || finishedAt.Sub(b.last) > 2*b.Max {
		b.delay = min(b.Initial, b.Max)
		b.last = finishedAt
		return 0
	}
	wait := b.delay
	b.delay = min(2*b.delay, b.Max)
	b.last = finishedAt
	return wait
}

// Reset forgets every earlier exit.
func (b *Backoff) Reset() { b.delay, b.last = 0, time.Time{} }

// State returns the back-off's memory: the next delay and the last exit, for saving.
func (b *Backoff) State() (delay time.Duration, last time.Time) { return b.delay, b.last }

// Restore sets the memory State returned.
func (b *Backoff) Restore(delay time.Duration, last time.Time) { b.delay, b.last = delay, last }
