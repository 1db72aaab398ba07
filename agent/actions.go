package agent

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/kube"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// handleTransition logs a probe's change of value and acts on it: a liveness or
// startup failure stops the container.
func (a *Agent) handleTransition(tr prober.Transition) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cs := a.ctrs[tr.ID]
	if cs == nil || cs.instance != tr.Instance || a.closing {
		return
	}
	level := zap.InfoLevel
	if tr.To == prober.ValueFailure {
		level = zap.WarnLevel
	}
	a.log.Log(level, "probe transition", append(a.fields(cs),
		zap.String("probe", tr.Type.String()), zap.String("method", tr.Method),
		zap.String("from", tr.From.String()), zap.String("to", tr.To.String()),
		zap.Int("consecutive", tr.Consecutive), zap.Int("threshold", tr.Threshold),
		zap.String("output", tr.Result.Output))...)
	if tr.To == prober.ValueFailure {
		a.event(cs, kube.Warning, "Unhealthy", "Probe", fmt.Sprintf("container %s: %s probe (%s) failed %d times in a row (threshold %d): %s",
			cs.c.Container, tr.Type, tr.Method, tr.Consecutive, tr.Threshold, tr.Result.Output))
	}
	if tr.To == prober.ValueFailure && (tr.Type == service.Liveness || tr.Type == service.Startup) && cs.state == StateRunning {
		a.stop(cs, tr.Type)
	}
	a.publish(cs)
	a.persist()
}

// stop terminates a container whose liveness or startup probe failed: readiness is
// false at once, liveness and startup pause, and the runtime gets SIGTERM, then SIGKILL
// after the grace period.
func (a *Agent) stop(cs *containerState, by service.ProbeType) {
	grace := a.opts.GracePeriod
	if g := cs.c.Spec.Check(by).TerminationGracePeriodSeconds; g != nil {
		grace = g.D()
	}
	grace = max(grace, MinGracePeriod)
	cs.state, cs.stopReason = StateTerminating, by.String()
	a.mgr.Pause(cs.c.Name)
	action := "stopping container"
	switch {
	case !cs.c.Owned:
		action = "stopping container; the " + cs.c.ManagedBy + " restarts it"
	case runtime.ShouldRestart(cs.c.Spec.RestartPolicy, 0, true):
		action = "stopping container, will be restarted"
	}
	a.log.Warn(action, append(a.fields(cs), zap.String("reason", by.String()+" probe failed"),
		zap.Duration("grace_period", grace))...)
	a.event(cs, kube.Normal, "Killing", "Stop", fmt.Sprintf("Stopping container %s: %s probe failed; grace period %v",
		cs.c.Container, by, grace))
	name, ctx := cs.c.Name, a.runCtx
	a.pending.Add(1)
	go func() {
		defer a.pending.Done()
		if err := a.rt.Stop(ctx, name, grace); err != nil {
			a.log.Error("stop failed", zap.String("container", name), zap.Error(err))
		}
	}()
}

// scheduleRestart restarts the container after its back-off; the first restart after
// a calm period is immediate. Called with a.mu held.
func (a *Agent) scheduleRestart(cs *containerState, finishedAt time.Time, reason string) {
	if a.closing {
		return
	}
	wait := cs.backoff.Next(finishedAt)
	if wait > 0 {
		cs.state, cs.backoffFor = StateBackoff, wait
		cs.message = "back-off " + wait.String() + " restarting failed container"
		a.log.Warn("back-off restarting container", append(a.fields(cs), zap.Duration("backoff", wait), zap.String("reason", reason))...)
	}
	name := cs.c.Name
	cs.restartReason = reason
	a.pending.Add(1)
	cs.timer = time.AfterFunc(wait, func() {
		defer a.pending.Done()
		a.restart(name)
	})
}

// restart counts a restart and asks the runtime to start the container again; it runs
// on the back-off timer's goroutine.
func (a *Agent) restart(name string) {
	a.mu.Lock()
	cs := a.ctrs[name]
	if cs == nil || a.closing {
		a.mu.Unlock()
		return
	}
	reason := cs.restartReason
	cs.timer = nil
	cs.restarts++
	cs.backoffFor = 0
	a.log.Info("restarting container", append(a.fields(cs), zap.String("reason", reason), zap.Int("restart_count", cs.restarts))...)
	if a.m != nil {
		a.m.Restarted(metricsName(cs), reason)
	}
	a.persist()
	ctx := a.runCtx
	a.mu.Unlock()
	if err := a.rt.Start(ctx, name); err != nil {
		a.log.Debug("restart not started", zap.String("container", name), zap.Error(err))
	}
}
