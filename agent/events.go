package agent

import (
	"time"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// handleEvent applies one runtime event to the container it names.
func (a *Agent) handleEvent(ev runtime.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer a.persist()
	if ev.Type == runtime.Added {
		a.added(ev)
		if ev.Instance == "" {
			return
		}
		ev.Type = runtime.Started // added while running: start following it at once
	}
	cs := a.ctrs[ev.Name]
	if cs == nil {
		return
	}
	switch ev.Type {
	case runtime.Started:
		a.started(cs, ev)
	case runtime.Exited:
		switch {
		case ev.Instance != cs.instance:
			return
		case ev.Reason != "" && (cs.state == StateExited || cs.state == StateBackoff || cs.state == StateError):
			a.goneAfterExit(cs, ev)
		default:
			a.exited(cs, ev)
		}
	case runtime.StartFailed:
		cs.state, cs.message, cs.pid = StateError, ev.Err.Error(), 0
		a.log.Error("container could not start", append(a.fields(cs), zap.Error(ev.Err))...)
		a.scheduleRestart(cs, ev.Time, "start_failed")
	case runtime.Removed:
		a.removed(ev.Name, cs)
		return
	}
	a.publish(cs)
}

// added records a new container, or new checks for a known one.
func (a *Agent) added(ev runtime.Event) {
	c := *ev.Container
	cs := a.ctrs[ev.Name]
	if cs == nil {
		cs = &containerState{c: c, state: StateWaiting,
			backoff: runtime.Backoff{Initial: a.opts.Backoff, Max: a.opts.BackoffMax}}
		if sc, ok := a.saved.Containers[ev.Name]; ok {
			cs.restarts, cs.lastExit = sc.RestartCount, sc.LastExitCode
			cs.backoff.Restore(sc.BackoffDelay, sc.BackoffLast)
		}
		a.ctrs[ev.Name] = cs
		a.log.Info("container added", append(a.fields(cs), zap.Bool("owned", c.Owned))...)
	} else {
		cs.c = c
		a.log.Info("container checks changed", a.fields(cs)...)
		if cs.state == StateRunning {
			a.mgr.Unregister(ev.Name)
			if c.Err == nil {
				if err := a.register(cs, runtime.Event{Instance: cs.instance, Time: time.Now()}); err != nil {
					cs.message = err.Error()
				}
			}
		}
	}
	if c.Err != nil {
		cs.message = c.Err.Error()
		a.log.Error("container checks invalid", append(a.fields(cs), zap.Error(c.Err))...)
	}
	a.resolveGPUs(cs)
	if a.m != nil {
		a.m.SetChecksInvalid(metricsName(cs), c.Err != nil)
		probes := map[string]string{}
		if c.Spec != nil && c.Err == nil {
			for _, t := range service.ProbeTypes {
				if ch := c.Spec.Check(t); ch != nil {
					probes[t.String()] = ch.Method()
				}
			}
		}
		a.m.ContainerKnown(metricsName(cs), probes)
	}
	if ev.Instance == "" {
		a.publish(cs)
	}
}

// started follows a new instance of a container and starts probing it.
func (a *Agent) started(cs *containerState, ev runtime.Event) {
	if cs.instance != "" && cs.instance != ev.Instance && !cs.c.Owned {
		// Someone else (the kubelet, containerd's restart monitor) made a new
		// instance: follow it and carry the count on.
		cs.restarts++
		if a.m != nil {
			a.m.Restarted(metricsName(cs), cs.exitReason(ev))
		}
	}
	cs.state, cs.id, cs.instance, cs.pid, cs.message, cs.stopReason = StateRunning, ev.ID, ev.Instance, ev.PID, "", ""
	if cs.id == "" {
		cs.id = ev.Instance
	}
	cs.backoffFor = 0
	a.log.Info("container started", append(a.fields(cs), zap.Int("pid", ev.PID), zap.Bool("adopted", ev.Adopted))...)
	if cs.c.Err != nil {
		cs.message = cs.c.Err.Error()
	} else if err := a.register(cs, ev); err != nil {
		cs.message = err.Error()
		a.log.Error("cannot probe container", append(a.fields(cs), zap.Error(err))...)
	}
}

// exited stops probing an instance that ended and applies the restart policy.
func (a *Agent) exited(cs *containerState, ev runtime.Event) {
	if st, ok := a.mgr.Status(ev.Name); ok {
		cs.lastProbes = st
	}
	a.mgr.Unregister(ev.Name)
	code := ev.ExitCode
	cs.lastExit, cs.pid, cs.state = &code, 0, StateExited
	a.log.Info("container exited", append(a.fields(cs), zap.Int("exit_code", code), zap.String("stopped_by", cs.stopReason))...)
	switch {
	case !cs.c.Owned:
		cs.message = "restarted by the " + cs.c.ManagedBy + ", not the agent"
	case cs.c.Spec != nil && runtime.ShouldRestart(cs.c.Spec.RestartPolicy, code, cs.stopReason != ""):
		a.scheduleRestart(cs, ev.Time, cs.exitReason(ev))
	case cs.c.Spec != nil:
		cs.message = "not restarted (restart_policy " + string(cs.c.Spec.RestartPolicy) + ")"
	}
}

// goneAfterExit takes news of an instance that had already exited, such as its
// container deleted behind the agent's back while a restart waits: the pending restart,
// which creates the container again, is counted under the new reason.
func (a *Agent) goneAfterExit(cs *containerState, ev runtime.Event) {
	a.log.Warn("container "+ev.Reason+" after it exited", append(a.fields(cs), zap.Bool("restart_pending", cs.timer != nil))...)
	if cs.timer != nil {
		cs.restartReason = ev.Reason
	}
}

// removed forgets a container that is gone, with its probes, timers and series.
func (a *Agent) removed(name string, cs *containerState) {
	a.mgr.Unregister(name)
	if cs.timer != nil && cs.timer.Stop() {
		a.pending.Done()
	}
	delete(a.ctrs, name)
	a.publishPod(cs) // the pod's other containers, or none
	a.log.Info("container removed", a.fields(cs)...)
	if a.m != nil {
		a.m.DeleteContainer(metricsName(cs))
	}
}

// register hands a new instance's checks to the probe manager.
func (a *Agent) register(cs *containerState, ev runtime.Event) error {
	tg, err := a.rt.Target(cs.c.Name)
	if err != nil {
		return err
	}
	inst := prober.Instance{
		ID: cs.c.Name, Instance: ev.Instance, Target: tg, StartedAt: ev.Time, Adopted: ev.Adopted,
		Restore: a.restoreFor(cs.c.Name, ev.Instance),
		Labels:  prober.Labels{Namespace: cs.c.Namespace, Pod: cs.c.Pod, Container: cs.c.Container},
	}
	for _, t := range service.ProbeTypes {
		inst.Checks[t] = cs.c.Spec.Check(t)
	}
	a.mgr.Register(inst)
	return nil
}
