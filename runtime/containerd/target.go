package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/probe-agent/probe-agent/runtime"
)

// unavailableError marks errors that mean the container itself cannot be reached; the
// prober treats them as "could not run", not as failures.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string     { return e.err.Error() }
func (e *unavailableError) Unwrap() error     { return e.err }
func (e *unavailableError) Unavailable() bool { return true }

func unavailable(err error) error { return &unavailableError{err} }

// Timing of exec clean-up: output still arriving after the exec exited is read for at
// most ioDrain (a background child can hold the pipes open forever), and the exec is
// deleted asynchronously within deleteTimeout, since the shim may itself wait for the
// output for up to 10 s.
const (
	ioDrain       = 200 * time.Millisecond
	killWait      = 5 * time.Second
	deleteTimeout = 15 * time.Second
)

var execSeq atomic.Uint64

// target probes one instance of a container: exec through the task, dials from inside
// its network namespace.
type target struct {
	client  *containerd.Client
	ns, id  string
	pid     int
	process *specs.Process
	hostNet bool
	fifoDir string
	cleanup *sync.WaitGroup
	runners *runners     // nil: every exec goes through containerd exec
	path    func(string) // counts the path each exec took: "runner" or "exec"

	hostOnce sync.Once
	host     string

	taskMu sync.Mutex
	task   containerd.Task // loaded on first exec; the instance's task never changes
}

func (t *target) netnsPath() string { return "/proc/" + strconv.Itoa(t.pid) + "/ns/net" }

// Host returns the container's first non-loopback address, else 127.0.0.1 of its
// namespace (or of the host for host-network containers).
func (t *target) Host() string {
	t.hostOnce.Do(func() {
		t.host = "127.0.0.1"
		if !t.hostNet {
			t.host = firstAddress(t.netnsPath())
		}
	})
	return t.host
}

// DialContext connects from inside the container's network namespace, whichever
// namespace the agent itself runs in: for a host-network container that is the host's,
// which is not the agent's when the agent runs in a pod network of its own. A refused
// connection is explained from the container's /proc/<pid>/net/tcp{,6}.
func (t *target) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := dialInNetNS(ctx, t.netnsPath(), network, addr)
	if err != nil {
		if _, serr := os.Stat("/proc/" + strconv.Itoa(t.pid)); serr != nil {
			return nil, unavailable(fmt.Errorf("container %s: task %d is gone: %w", t.id, t.pid, err))
		}
		return nil, runtime.Explain(err, addr, "/proc/"+strconv.Itoa(t.pid)+"/net")
	}
	return conn, nil
}

// execID names a new exec: prefix, a sequence number and a random part (exec IDs are
// per task, and another agent may exec in the same task).
func execID(prefix string) string {
	return prefix + strconv.FormatUint(execSeq.Add(1), 10) + "-" + nonce()[:8]
}

// Exec runs argv inside the container with the container's own process spec (env,
// user, working directory, capabilities): on the instance's exec runner when one is
// idle (runner.go), else through containerd exec. A runner that fails is never the
// probe's failure: the probe then goes through containerd exec at once.
func (t *target) Exec(ctx context.Context, argv []string, out io.Writer) (int, error) {
	if t.runners != nil {
		if r := t.runners.get(ctx, t); r != nil {
			code, err := r.run(ctx, argv, out, t.runners.sweeper())
			t.runners.put(r, err)
			if !errors.Is(err, errRunner) {
				t.count("runner")
				return code, err
			}
			resetOutput(out)
		}
	}
	t.count("exec")
	return t.containerdExec(ctx, argv, out)
}

func (t *target) count(path string) {
	if t.path != nil {
		t.path(path)
	}
}

// containerdExec runs argv through containerd exec. When ctx ends the exec is killed
// with SIGKILL. Output is read until the exec exits and at most ioDrain longer; the
// exec is deleted in the background.
func (t *target) containerdExec(ctx context.Context, argv []string, out io.Writer) (int, error) {
	// The short RPCs carry no deadline (each deadline costs gRPC a timer); the probe's
	// deadline bounds the wait for the exit below, which is where time goes.
	nctx := namespaces.WithNamespace(context.WithoutCancel(ctx), t.ns)
	task, err := t.loadTask(nctx)
	if err != nil {
		return -1, t.wrap(err)
	}
	ps := *t.process
	ps.Args, ps.Terminal = argv, false
	proc, err := task.Exec(nctx, execID("probe-"), &ps, cio.NewCreator(cio.WithStreams(nil, out, out), cio.WithFIFODir(t.fifoDir)))
	if err != nil {
		return -1, t.wrap(err)
	}
	defer t.deleteLater(proc)
	statusC, err := proc.Wait(nctx)
	if err != nil {
		return -1, t.wrap(err)
	}
	if err := proc.Start(nctx); err != nil {
		if code, ok := commandFailure(err); ok {
			fmt.Fprint(out, err.Error())
			return code, nil
		}
		return -1, t.wrap(err)
	}
	select {
	case st := <-statusC:
		code, _, err := st.Result()
		t.drain(proc)
		if err != nil {
			return -1, t.wrap(err)
		}
		return int(code), nil
	case <-ctx.Done():
		kctx, cancel := t.callCtx(killWait)
		defer cancel()
		_ = proc.Kill(kctx, syscall.SIGKILL)
		select {
		case <-statusC:
		case <-kctx.Done():
		}
		t.drain(proc)
		return -1, ctx.Err()
	}
}

// commandFailure reads runc's report of a command that could not be started (it comes
// as an error of the start, not as an exit code) as a shell would: 127 for a missing
// command, 126 for one that cannot be executed. A task or process that containerd does
// not know, or containerd itself being unreachable, is not the command's fault.
func commandFailure(err error) (int, bool) {
	if errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "exec failed") {
		return 0, false
	}
	switch msg := err.Error(); {
	case strings.Contains(msg, "no such file or directory") || strings.Contains(msg, "executable file not found"):
		return 127, true
	case strings.Contains(msg, "permission denied"):
		return 126, true
	}
	return 0, false
}

// loadTask returns the instance's task, loading it once.
func (t *target) loadTask(nctx context.Context) (containerd.Task, error) {
	t.taskMu.Lock()
	defer t.taskMu.Unlock()
	if t.task != nil {
		return t.task, nil
	}
	c, err := t.client.LoadContainer(nctx, t.id)
	if err != nil {
		return nil, err
	}
	task, err := c.Task(nctx, nil)
	if err != nil {
		return nil, err
	}
	if int(task.Pid()) != t.pid {
		return nil, errdefs.ErrNotFound // a newer instance: this one is gone
	}
	t.task = task
	return task, nil
}

// drain waits a little for the output copy to finish, then abandons it.
func (t *target) drain(p containerd.Process) {
	done := make(chan struct{})
	go func() {
		p.IO().Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(ioDrain):
		p.IO().Cancel()
		<-done
	}
}

// deleteLater removes the exec process without making the probe wait for it.
func (t *target) deleteLater(p containerd.Process) {
	t.cleanup.Add(1)
	go func() {
		defer t.cleanup.Done()
		t.delete(p, containerd.WithProcessKill)
	}()
}

// delete removes an exec process and abandons what is left of its output.
func (t *target) delete(p containerd.Process, opts ...containerd.ProcessDeleteOpts) {
	ctx, cancel := t.callCtx(deleteTimeout)
	defer cancel()
	p.IO().Cancel()
	_, _ = p.Delete(ctx, opts...)
}

// callCtx bounds a call to containerd that must be made whatever became of the probe's
// context (a kill, a delete): in the target's namespace, within d.
func (t *target) callCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), t.ns), d)
}

// wrap marks errors that mean the container or its task is gone, or containerd is
// unreachable, as unavailable.
func (t *target) wrap(err error) error {
	if errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) || errors.Is(err, context.Canceled) {
		return unavailable(fmt.Errorf("container %s: %w", t.id, err))
	}
	if strings.Contains(err.Error(), "Unavailable") || strings.Contains(err.Error(), "connection refused") {
		return unavailable(fmt.Errorf("container %s: %w", t.id, err))
	}
	return fmt.Errorf("container %s: %w", t.id, err)
}
