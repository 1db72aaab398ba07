package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/runtime"
)

// Target returns how to probe a container's current instance.
func (r *Runtime) Target(name string) (runtime.Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[name]
	if e == nil || !e.running {
		return nil, fmt.Errorf("container %s: not running", name)
	}
	return &target{client: r.client, ns: e.ns, id: e.id, pid: e.pid, process: e.process, hostNet: e.hostNet,
		fifoDir: filepath.Join(r.opts.RuntimeDir, "fifo"), cleanup: &r.cleanup,
		runners: r.runnersFor(name, e), path: r.execPath}, nil
}

// runnersFor returns the exec runners of a container's current instance, nil where
// runners are off (--exec-runner=off, or "exec_runner": false for the container);
// called with r.mu held.
func (r *Runtime) runnersFor(name string, e *entry) *runners {
	if r.opts.NoExecRunner || (e.c.Spec != nil && e.c.Spec.ExecRunner != nil && !*e.c.Spec.ExecRunner) {
		return nil
	}
	s := r.runners[e.inst]
	if s == nil {
		s = &runners{note: func(reason string) { r.noteRunner(name, reason) }, cleanup: &r.cleanup}
		r.runners[e.inst] = s
	}
	return s
}

// noteRunner logs why a container's exec probes go through containerd exec, once per
// container and reason.
func (r *Runtime) noteRunner(name, reason string) {
	r.mu.Lock()
	same := r.runnerNotes[name] == reason
	r.runnerNotes[name] = reason
	r.mu.Unlock()
	if !same {
		r.log.Warn("exec probes of this container go through containerd exec", zap.String("container", name), zap.String("reason", reason))
	}
}

// endRunners closes the runners of an instance that ended, or all of them when inst
// is "".
func (r *Runtime) endRunners(inst string) {
	r.mu.Lock()
	var end []*runners
	if inst != "" {
		if s := r.runners[inst]; s != nil {
			end = append(end, s)
		}
		delete(r.runners, inst)
	} else {
		for _, s := range r.runners {
			end = append(end, s)
		}
		clear(r.runners)
	}
	r.mu.Unlock()
	for _, s := range end {
		s.close()
	}
}

func (r *Runtime) lookup(name string) (*containerd.Client, string, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[name]
	if e == nil {
		return nil, "", "", fmt.Errorf("container %s: not found", name)
	}
	if r.client == nil {
		return nil, "", "", fmt.Errorf("container %s: containerd not connected", name)
	}
	return r.client, e.ns, e.id, nil
}

// Stop sends SIGTERM to the container's task, SIGKILL to all its processes after grace,
// and returns once the task has exited.
func (r *Runtime) Stop(ctx context.Context, name string, grace time.Duration) error {
	client, ns, id, err := r.lookup(name)
	if err != nil {
		return err
	}
	nctx := namespaces.WithNamespace(ctx, ns)
	c, err := client.LoadContainer(nctx, id)
	if err != nil {
		return fmt.Errorf("container %s: %w", name, err)
	}
	task, err := c.Task(nctx, nil)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("container %s: %w", name, err)
	}
	exitc, err := task.Wait(nctx)
	if err != nil {
		return fmt.Errorf("container %s: %w", name, err)
	}
	if err := task.Kill(nctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("container %s: SIGTERM: %w", name, err)
	}
	select {
	case <-exitc:
		return nil
	case <-time.After(grace):
	case <-ctx.Done():
	}
	kctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 30*time.Second)
	defer cancel()
	if err := task.Kill(kctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("container %s: SIGKILL: %w", name, err)
	}
	select {
	case <-exitc:
		return nil
	case <-kctx.Done():
		return fmt.Errorf("container %s: still running after SIGKILL", name)
	}
}

// Start starts a new task for a container the agent may restart: the old task is
// deleted and a new one created from the same container (restart in place). Containers
// of the agent's service.json are created first if they do not exist.
func (r *Runtime) Start(ctx context.Context, name string) error {
	var managedBy string
	r.mu.Lock()
	if e := r.entries[name]; e != nil && !e.c.Owned {
		managedBy = e.c.ManagedBy
	}
	r.mu.Unlock()
	if managedBy != "" {
		return fmt.Errorf("container %s: restarted by the %s, not the agent", name, managedBy)
	}
	client, err := r.getClient()
	if err != nil {
		return err
	}
	var ns, id string
	if cfg := r.config[name]; cfg != nil && cfg.CreatedByAgent() {
		ns, id = OwnedNamespace, name
		if err := r.create(ctx, client, cfg); err != nil {
			r.send([]runtime.Event{{Type: runtime.StartFailed, Name: name, Time: time.Now(), Err: err}})
			return err
		}
	} else if _, ns, id, err = r.lookup(name); err != nil {
		return err
	}
	r.mu.Lock()
	r.fresh[name] = true
	r.mu.Unlock()
	if err := r.newTask(ctx, client, ns, id); err != nil {
		err = fmt.Errorf("container %s: %w", name, err)
		r.send([]runtime.Event{{Type: runtime.StartFailed, Name: name, Time: time.Now(), Err: err}})
		return err
	}
	return nil
}

func (r *Runtime) newTask(ctx context.Context, client *containerd.Client, ns, id string) error {
	// Creating a task starts a shim; cancelling half-way would orphan it, so the
	// caller's cancellation does not reach these calls, a timeout bounds them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	nctx := namespaces.WithNamespace(ctx, ns)
	c, err := client.LoadContainer(nctx, id)
	if err != nil {
		return err
	}
	if old, err := c.Task(nctx, nil); err == nil {
		if st, err := old.Status(nctx); err == nil && st.Status == containerd.Running {
			return errors.New("already running")
		}
		if _, err := old.Delete(nctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("deleting the old task: %w", err)
		}
	}
	task, err := c.NewTask(nctx, r.logTo(ns, id))
	if err != nil {
		return fmt.Errorf("creating the task: %w", err)
	}
	if err := task.Start(nctx); err != nil {
		_, _ = task.Delete(nctx, containerd.WithProcessKill)
		return fmt.Errorf("starting the task: %w", err)
	}
	return nil
}

// logTo is where a container the agent starts writes its output: a file under the
// state dir, or nowhere when that cannot be written (a read-only or full disk must not
// keep the container from starting).
func (r *Runtime) logTo(ns, id string) cio.Creator {
	logs := filepath.Join(r.opts.StateDir, "logs")
	path := filepath.Join(logs, ns+"_"+id+".log")
	err := os.MkdirAll(logs, 0o755)
	if err == nil {
		var f *os.File
		if f, err = os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			f.Close()
			return cio.LogFile(path)
		}
	}
	r.log.Warn("cannot write the container's log; its output is discarded", zap.String("namespace", ns),
		zap.String("id", id), zap.Error(err))
	return cio.NullIO
}
