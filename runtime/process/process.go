// Package process runs local processes as containers: the agent's embedded default
// runtime. Each container is a process group of its own with the container's
// environment, inside a group (group.go: a cgroup where the host allows one) that holds
// everything it starts; stopping sends SIGTERM to the process group and, after the
// grace period, SIGKILL to everything in the group. Exec probes run in groups of their
// own too. With a state dir, run counts survive the agent, and an agent that finds
// groups a previous one left behind (it was killed) kills them first.
package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// Options configure the runtime.
type Options struct {
	// ShutdownGrace bounds how long containers get to exit on SIGTERM when the agent
	// shuts down.
	ShutdownGrace time.Duration
	// StateDir, when set, keeps the runtime's run counts (instance IDs continue across
	// agent restarts) and names its groups, so that the next agent finds leftovers.
	StateDir string
	Logger   *zap.Logger
}

// Runtime starts the containers of a service as local processes.
type Runtime struct {
	opts   Options
	log    *zap.Logger
	groups *groups

	mu      sync.Mutex
	ctrs    map[string]*container
	order   []string
	events  chan<- runtime.Event
	stopped bool
	wg      sync.WaitGroup
}

type container struct {
	spec    *service.Container
	env     []string
	runs    int
	cmd     *exec.Cmd
	pid     int
	group   *group
	done    chan struct{} // closed when the current instance has exited
	running bool
}

// Validate reports, with JSON paths, what the process runtime cannot run.
func Validate(svc *service.Service) error {
	var errs service.ErrorList
	for i, c := range svc.Containers {
		if len(c.Args) == 0 {
			errs = append(errs, &service.FieldError{Path: fmt.Sprintf("containers[%d].command", i), Msg: "required by the process runtime"})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// New returns a runtime for the containers of svc.
func New(svc *service.Service, opts Options) (*Runtime, error) {
	if err := Validate(svc); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	gs, err := newGroups(opts.StateDir)
	if err != nil {
		return nil, err
	}
	r := &Runtime{opts: opts, log: opts.Logger, groups: gs, ctrs: map[string]*container{}}
	for i := range svc.Containers {
		c := &svc.Containers[i]
		r.ctrs[c.Name] = &container{spec: c, env: append(os.Environ(), c.Environ()...)}
		r.order = append(r.order, c.Name)
	}
	return r, nil
}

// Run starts every container and reports their events; when ctx ends it stops them all
// (SIGTERM, then SIGKILL after the shutdown grace) and returns once they have exited.
func (r *Runtime) Run(ctx context.Context, events chan<- runtime.Event) error {
	r.mu.Lock()
	r.events = events
	r.mu.Unlock()
	defer r.groups.close()
	if n := r.groups.killLeftovers(); n > 0 {
		r.log.Warn("killed what an earlier agent left running", zap.Int("groups", n), zap.String("kind", r.groups.kind))
	}
	r.log.Info("processes kept in groups", zap.String("kind", r.groups.kind), zap.String("root", r.groups.root))
	r.loadRuns()
	for _, name := range r.order {
		c := r.ctrs[name]
		events <- runtime.Event{Type: runtime.Added, Name: name, Time: time.Now(), Container: &runtime.Container{
			Identity: runtime.Identity{Name: name, Container: name}, Spec: c.spec, Owned: true,
			GPUs: gpu.FromEnv(c.spec.Environ())}}
		if err := r.Start(ctx, name); err != nil && !errors.Is(err, errStartFailed) {
			return err
		}
	}
	<-ctx.Done()
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, name := range r.order {
		wg.Go(func() { _ = r.Stop(context.Background(), name, r.opts.ShutdownGrace) })
	}
	wg.Wait()
	r.wg.Wait()
	return nil
}

var errStartFailed = errors.New("start failed")

// Start starts a new instance of a container that is not running. A command that
// cannot start is reported as a StartFailed event.
func (r *Runtime) Start(ctx context.Context, name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.ctrs[name]
	if !ok {
		return fmt.Errorf("container %q: not found", name)
	}
	if r.stopped {
		return fmt.Errorf("container %q: runtime is shutting down", name)
	}
	if c.running {
		return fmt.Errorf("container %q: already running", name)
	}
	c.runs++
	r.saveRuns()
	instance := name + "." + strconv.Itoa(c.runs)
	cmd := exec.Command(c.spec.Args[0], c.spec.Args[1:]...)
	cmd.Env = c.env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// Own process group so that stop signals reach every process of the container; the
	// kernel kills the main process if the agent dies, and the next agent kills what is
	// left in its group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	g, err := r.groups.new(name)
	if err == nil {
		err = g.start(cmd)
		if err != nil {
			_ = g.kill()
		}
	}
	if err != nil {
		r.send(runtime.Event{Type: runtime.StartFailed, Name: name, Instance: instance, Time: time.Now(),
			Err: fmt.Errorf("container %q: start %q: %w", name, c.spec.Args[0], err)})
		return errStartFailed
	}
	c.cmd, c.pid, c.group, c.running, c.done = cmd, cmd.Process.Pid, g, true, make(chan struct{})
	r.send(runtime.Event{Type: runtime.Started, Name: name, ID: instance, Instance: instance, PID: c.pid, Time: time.Now()})
	r.wg.Add(1)
	go r.wait(name, instance, c, cmd, c.done)
	return nil
}

// wait reaps one instance, kills whatever it left in its group, as a container's end
// does, and reports its exit.
func (r *Runtime) wait(name, instance string, c *container, cmd *exec.Cmd, done chan struct{}) {
	defer r.wg.Done()
	_ = cmd.Wait()
	code := exitCode(cmd.ProcessState)
	if err := c.group.kill(); err != nil {
		r.log.Warn("cannot kill what the container left behind", zap.String("container", name), zap.Error(err))
	}
	r.mu.Lock()
	c.running = false
	close(done)
	r.send(runtime.Event{Type: runtime.Exited, Name: name, Instance: instance, PID: cmd.Process.Pid,
		Time: time.Now(), ExitCode: code})
	r.mu.Unlock()
}

// send delivers an event; it is called with r.mu held so that events of one container
// keep their order.
func (r *Runtime) send(ev runtime.Event) {
	if r.events != nil {
		r.events <- ev
	}
}

// exitCode follows the shell's convention: 128+n for a process killed by signal n.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// Stop sends SIGTERM to the container's process group, SIGKILL after grace, and
// returns once the container has exited.
func (r *Runtime) Stop(ctx context.Context, name string, grace time.Duration) error {
	r.mu.Lock()
	c, ok := r.ctrs[name]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("container %q: not found", name)
	}
	if !c.running {
		r.mu.Unlock()
		return nil
	}
	pid, g, done := c.pid, c.group, c.done
	r.mu.Unlock()
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = g.kill()
	<-done
	return ctx.Err()
}

// Connected is always true: local processes need no connection.
func (r *Runtime) Connected() bool { return true }

// Target returns how to probe a container: on the host, with its environment. The
// container map is fixed after New, so this takes no lock.
func (r *Runtime) Target(name string) (runtime.Target, error) {
	c, ok := r.ctrs[name]
	if !ok {
		return nil, fmt.Errorf("container %q: not found", name)
	}
	return &Target{Env: c.env, groups: r.groups}, nil
}

// Target probes on the host: dials go to 127.0.0.1 and exec runs the command as a
// process group of its own with the container's environment, in a group of its own
// when the target has groups.
type Target struct {
	Env    []string
	groups *groups
}

// Host returns 127.0.0.1.
func (*Target) Host() string { return "127.0.0.1" }

// DialContext dials on the host; a refused connection says what does listen.
func (*Target) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	return c, runtime.Explain(err, address, "/proc/net")
}

// drainWait bounds how long output is read after a command exits, for descendants
// that escaped its process group and still hold the pipe.
const drainWait = 100 * time.Millisecond

// Exec runs argv without a shell. When it exits or ctx ends, every process left in its
// group is killed, so a probe leaves nothing behind and a background child holding
// stdout never blocks the probe.
func (t *Target) Exec(ctx context.Context, argv []string, out io.Writer) (int, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return -1, err
	}
	defer pr.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = t.Env
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	g, err := t.start(cmd)
	pw.Close()
	if err != nil {
		fmt.Fprint(out, err.Error())
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127, nil
		}
		return 126, nil
	}
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(out, pr)
		close(copied)
	}()
	pgid := cmd.Process.Pid
	// On timeout the whole process group is killed, which ends the Wait below.
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	_ = cmd.Wait()
	timedOut := !stop()
	var ctxErr error
	if timedOut {
		ctxErr = ctx.Err()
	}
	// Whatever the command left behind: its process group, then its group, which holds
	// the descendants that left the process group too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	if g != nil {
		_ = g.kill()
	}
	select {
	case <-copied:
	default:
		drain := time.NewTimer(drainWait)
		select {
		case <-copied:
		case <-drain.C:
			pr.Close()
			<-copied
		}
		drain.Stop()
	}
	if ctxErr != nil {
		return -1, ctxErr
	}
	return exitCode(cmd.ProcessState), nil
}

// start starts cmd, in a group of its own when the target has groups.
func (t *Target) start(cmd *exec.Cmd) (*group, error) {
	if t.groups == nil {
		return nil, cmd.Start()
	}
	g, err := t.groups.new("exec")
	if err != nil {
		return nil, cmd.Start() // a cgroup that cannot be made: the process group still holds most
	}
	if err := g.start(cmd); err != nil {
		_ = g.kill()
		return nil, err
	}
	return g, nil
}

// runsFile is where the runtime keeps its run counts in the state dir.
const runsFile = "process.json"

// loadRuns continues each container's run count from the state dir, so that instance
// IDs are never reused across agent restarts.
func (r *Runtime) loadRuns() {
	if r.opts.StateDir == "" {
		return
	}
	data, err := os.ReadFile(filepath.Join(r.opts.StateDir, runsFile))
	if err != nil {
		return
	}
	var saved struct {
		Runs map[string]int `json:"runs"`
	}
	if err := json.Unmarshal(data, &saved); err != nil {
		r.log.Warn("cannot read saved run counts; instance IDs start over", zap.Error(err))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, n := range saved.Runs {
		if c := r.ctrs[name]; c != nil {
			c.runs = n
		}
	}
}

// saveRuns records the run counts; called with r.mu held, at each start.
func (r *Runtime) saveRuns() {
	if r.opts.StateDir == "" {
		return
	}
	runs := map[string]int{}
	for name, c := range r.ctrs {
		runs[name] = c.runs
	}
	data, _ := json.Marshal(map[string]any{"runs": runs})
	tmp := filepath.Join(r.opts.StateDir, runsFile+".tmp")
	err := os.MkdirAll(r.opts.StateDir, 0o755)
	if err == nil {
		err = os.WriteFile(tmp, data, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(r.opts.StateDir, runsFile))
	}
	if err != nil {
		r.log.Warn("cannot save run counts", zap.Error(err))
	}
}
