// Package agent is the small brain that wires the runtime, the prober and the metrics:
// runtime events register probes, probe transitions become actions (stop, restart per
// policy with back-off), and everything is reported through logs, metrics and the
// status API.
package agent

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/metrics"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// MinGracePeriod is the shortest time a container gets between SIGTERM and SIGKILL.
const MinGracePeriod = 2 * time.Second

// Options configure an Agent.
type Options struct {
	Runtime runtime.Runtime
	Logger  *zap.Logger
	Metrics *metrics.Metrics
	// Prober configures the probe manager; Logger and Recorder are filled in.
	Prober prober.Options
	// Backoff and BackoffMax bound the restart back-off (defaults 10 s and 300 s).
	Backoff, BackoffMax time.Duration
	// GracePeriod is the default time between SIGTERM and SIGKILL (default 30 s,
	// at least MinGracePeriod); a check's termination_grace_period_seconds wins.
	GracePeriod time.Duration
	// StateDir, when set, is where probe state, restart counts and back-off are saved
	// so that an agent restart loses nothing.
	StateDir string
	// GPU, when set, is the node's GPU monitor: the agent runs it, maps containers to
	// their GPUs and reports their health. GPUUnavailable says why there is none.
	GPU            *gpu.Monitor
	GPUUnavailable string
	// GPUReadiness takes readiness away from a container while one of its GPUs is
	// Unhealthy (Unknown never does).
	GPUReadiness bool
}

// Agent runs probes against a runtime's containers and acts on their results.
type Agent struct {
	opts Options
	rt   runtime.Runtime
	mgr  *prober.Manager
	log  *zap.Logger
	m    *metrics.Metrics

	mu       sync.Mutex
	ctrs     map[string]*containerState
	closing  bool
	runCtx   context.Context
	pending  sync.WaitGroup // restarts and stops in flight
	loopBeat atomic.Int64   // unix nanos of the last loop iteration
	running  atomic.Bool

	saved     savedState // what the previous agent left, read at start
	lastSaved string

	gpus        map[string]gpu.Status // the monitor's latest state by UUID
	gpuMon      *gpu.Monitor          // guarded by mu; set at start or by AttachGPU
	unavailable string                // why there is no monitor; guarded by mu
	attach      chan *gpu.Monitor
}

// State values of a container in the status API.
const (
	StateWaiting     = "waiting"
	StateRunning     = "running"
	StateTerminating = "terminating"
	StateExited      = "exited"
	StateBackoff     = "backoff"
	StateError       = "error"
)

type containerState struct {
	c          runtime.Container
	state      string
	id         string
	instance   string
	pid        int
	restarts   int
	lastExit   *int
	message    string
	backoff    runtime.Backoff
	backoffFor time.Duration
	stopReason string // the probe type that stopped the instance, if one did
	timer      *time.Timer
	// lastProbes keeps the probe state of the last instance after it stopped, so that
	// the status API still shows why.
	lastProbes prober.Status
	// gpus are the GPUs the container uses; gpuBad lists the Unhealthy ones, as last
	// reported.
	gpus   []gpu.Device
	gpuBad []string
}

// New returns an Agent.
func New(opts Options) *Agent {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Backoff <= 0 {
		opts.Backoff = runtime.DefaultBackoff
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = runtime.DefaultBackoffMax
	}
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = 30 * time.Second
	}
	a := &Agent{opts: opts, rt: opts.Runtime, log: opts.Logger, m: opts.Metrics, ctrs: map[string]*containerState{},
		gpus: map[string]gpu.Status{}, gpuMon: opts.GPU, unavailable: opts.GPUUnavailable, attach: make(chan *gpu.Monitor, 1)}
	po := opts.Prober
	po.Logger = opts.Logger
	if a.m != nil {
		po.Recorder = recorder{a.m}
	}
	a.mgr = prober.NewManager(po)
	return a
}

// Manager returns the agent's probe manager.
func (a *Agent) Manager() *prober.Manager { return a.mgr }

// recorder adapts the metrics package to prober.Recorder.
type recorder struct{ m *metrics.Metrics }

func (r recorder) ObserveProbe(l prober.Labels, t service.ProbeType, method string, o prober.Outcome, d time.Duration) {
	result := "error"
	switch o {
	case prober.Success, prober.Warning:
		result = "success"
	case prober.Failure:
		result = "failure"
	}
	r.m.ProbeDone(metrics.Container{Namespace: l.Namespace, Pod: l.Pod, Name: l.Container}, t.String(), method, result, d)
}

func (r recorder) ObserveLateness(d time.Duration) { r.m.Lateness(d) }

// Run runs the agent until ctx ends. On the way out it stops probing first, then lets
// the runtime shut down (the process runtime stops its containers gracefully).
func (a *Agent) Run(ctx context.Context) error {
	mgrCtx, stopMgr := context.WithCancel(context.Background())
	rtCtx, stopRt := context.WithCancel(context.Background())
	a.mu.Lock()
	a.runCtx = rtCtx
	a.mu.Unlock()
	if a.opts.StateDir != "" {
		saved, err := loadState(a.opts.StateDir)
		if err != nil {
			a.log.Error("cannot read saved state", zap.Error(err))
		}
		a.saved = saved
	}
	events := make(chan runtime.Event, 1024)
	mgrDone := make(chan error, 1)
	rtDone := make(chan error, 1)
	go func() { mgrDone <- a.mgr.Run(mgrCtx) }()
	go func() { rtDone <- a.rt.Run(rtCtx, events) }()
	var gpuNotify <-chan struct{}
	var gpuRuns sync.WaitGroup
	startGPU := func(mon *gpu.Monitor) {
		gpuNotify = mon.Notify()
		gpuRuns.Go(func() { mon.Run(mgrCtx) })
	}
	if a.opts.GPU != nil {
		startGPU(a.opts.GPU)
	}
	a.running.Store(true)
	defer a.running.Store(false)

	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	var buf []prober.Transition
	var rtErr error
	a.loopBeat.Store(time.Now().UnixNano())
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case ev := <-events:
			a.handleEvent(ev)
		case <-a.mgr.Notify():
			buf = a.mgr.Drain(buf[:0])
			for _, tr := range buf {
				a.handleTransition(tr)
			}
		case <-gpuNotify:
			a.gpuChanged()
		case mon := <-a.attach:
			if gpuNotify == nil {
				a.attached(mon)
				startGPU(mon)
			}
		case err := <-rtDone:
			rtErr = err
			if rtErr == nil {
				rtErr = errors.New("runtime stopped unexpectedly")
			}
			break loop
		case <-beat.C:
		}
		a.loopBeat.Store(time.Now().UnixNano())
	}

	a.log.Info("shutting down")
	a.mu.Lock()
	a.closing = true
	for _, cs := range a.ctrs {
		if cs.timer != nil && cs.timer.Stop() {
			a.pending.Done()
		}
	}
	a.mu.Unlock()
	stopMgr()
	<-mgrDone
	gpuRuns.Wait()
	stopRt()
	if rtErr == nil {
		// Keep taking events until the runtime has stopped what it runs.
		for done := false; !done; {
			select {
			case ev := <-events:
				a.handleEvent(ev)
			case rtErr = <-rtDone:
				done = true
			}
		}
	}
	a.pending.Wait()
	a.mu.Lock()
	a.persist()
	a.mu.Unlock()
	return rtErr
}

func (a *Agent) fields(cs *containerState) []zap.Field {
	f := []zap.Field{zap.String("container", cs.c.Name)}
	if cs.c.Namespace != "" {
		f = append(f, zap.String("namespace", cs.c.Namespace), zap.String("pod", cs.c.Pod))
	}
	if cs.instance != "" {
		f = append(f, zap.String("instance", cs.instance))
	}
	return f
}

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
		if cs.instance != "" && cs.instance != ev.Instance && !cs.c.Owned {
			// Someone else (the kubelet, containerd's restart monitor) made a new
			// instance: follow it and carry the count on.
			reason := "exited"
			if cs.stopReason != "" {
				reason = cs.stopReason
			}
			cs.restarts++
			if a.m != nil {
				a.m.Restarted(metricsName(cs), reason)
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
	case runtime.Exited:
		if ev.Instance != cs.instance {
			return
		}
		if st, ok := a.mgr.Status(ev.Name); ok {
			cs.lastProbes = st
		}
		a.mgr.Unregister(ev.Name)
		code := ev.ExitCode
		cs.lastExit, cs.pid, cs.state = &code, 0, StateExited
		a.log.Info("container exited", append(a.fields(cs), zap.Int("exit_code", code), zap.String("stopped_by", cs.stopReason))...)
		reason := "exited"
		if cs.stopReason != "" {
			reason = cs.stopReason
		}
		switch {
		case !cs.c.Owned:
			cs.message = "restarted by the " + cs.c.ManagedBy + ", not the agent"
		case cs.c.Spec != nil && runtime.ShouldRestart(cs.c.Spec.RestartPolicy, code, cs.stopReason != ""):
			a.scheduleRestart(cs, ev.Time, reason)
		case cs.c.Spec != nil:
			cs.message = "not restarted (restart_policy " + string(cs.c.Spec.RestartPolicy) + ")"
		}
	case runtime.StartFailed:
		cs.state, cs.message, cs.pid = StateError, ev.Err.Error(), 0
		a.log.Error("container could not start", append(a.fields(cs), zap.Error(ev.Err))...)
		a.scheduleRestart(cs, ev.Time, "start_failed")
	case runtime.Removed:
		a.mgr.Unregister(ev.Name)
		if cs.timer != nil && cs.timer.Stop() {
			a.pending.Done()
		}
		delete(a.ctrs, ev.Name)
		a.log.Info("container removed", a.fields(cs)...)
		if a.m != nil {
			a.m.DeleteContainer(metricsName(cs))
		}
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
	}
	if ev.Instance == "" {
		a.publish(cs)
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

// scheduleRestart restarts the container after its back-off; the first restart after
// a calm period is immediate.
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
	a.pending.Add(1)
	cs.timer = time.AfterFunc(wait, func() {
		defer a.pending.Done()
		a.restart(name, reason)
	})
}

func (a *Agent) restart(name, reason string) {
	a.mu.Lock()
	cs := a.ctrs[name]
	if cs == nil || a.closing {
		a.mu.Unlock()
		return
	}
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
	name, ctx := cs.c.Name, a.runCtx
	a.pending.Add(1)
	go func() {
		defer a.pending.Done()
		if err := a.rt.Stop(ctx, name, grace); err != nil {
			a.log.Error("stop failed", zap.String("container", name), zap.Error(err))
		}
	}()
}

func metricsName(cs *containerState) metrics.Container {
	return metrics.Container{Namespace: cs.c.Namespace, Pod: cs.c.Pod, Name: cs.c.Container}
}

// readiness computes started and ready for a container from the probes of its
// current instance and the health of its GPUs; reason says why it is not ready
// (not_running, startup, readiness, gpu). Called with a.mu held.
func (a *Agent) readiness(cs *containerState) (started, ready bool, reason string) {
	started, ready, reason = a.probeReadiness(cs)
	if ready && a.opts.GPUReadiness && len(cs.gpuBad) > 0 {
		return started, false, "gpu"
	}
	return started, ready, reason
}

// probeReadiness is readiness from the probes alone; called with a.mu held.
func (a *Agent) probeReadiness(cs *containerState) (started, ready bool, reason string) {
	st, ok := a.mgr.Summary(cs.c.Name)
	switch {
	case cs.state != StateRunning || !ok || st.Instance != cs.instance:
		return ok && st.Instance == cs.instance && st.Started, false, "not_running"
	case !st.Started:
		return false, false, "startup"
	case st.Has[service.Readiness] && st.Values[service.Readiness] != prober.ValueSuccess:
		return true, false, "readiness"
	}
	return true, true, ""
}

// publish updates a container's gauges; called with a.mu held.
func (a *Agent) publish(cs *containerState) {
	if a.m == nil {
		return
	}
	started, ready, _ := a.readiness(cs)
	a.m.SetContainer(metricsName(cs), ready, started, cs.backoffFor)
}

// ContainerStatus is one container in the status API.
type ContainerStatus struct {
	Name         string `json:"name"`
	ID           string `json:"id"`
	State        string `json:"state"`
	PID          int    `json:"pid"`
	RestartCount int    `json:"restart_count"`
	Started      bool   `json:"started"`
	Ready        bool   `json:"ready"`
	LastExitCode *int   `json:"last_exit_code"`
	// NotReadyReason says why a container is not ready: not_running, startup,
	// readiness or gpu.
	NotReadyReason string                         `json:"not_ready_reason,omitempty"`
	Message        string                         `json:"message,omitempty"`
	Probes         map[string]*prober.ProbeStatus `json:"probes"`
	GPUs           []ContainerGPU                 `json:"gpus"`
}

// Containers returns the status of every container, sorted by name.
func (a *Agent) Containers() []ContainerStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]ContainerStatus, 0, len(a.ctrs))
	for _, cs := range a.ctrs {
		out = append(out, a.status(cs))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Container returns one container's status.
func (a *Agent) Container(name string) (ContainerStatus, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cs := a.ctrs[name]
	if cs == nil {
		return ContainerStatus{}, false
	}
	return a.status(cs), true
}

func (a *Agent) status(cs *containerState) ContainerStatus {
	started, ready, reason := a.readiness(cs)
	st, ok := a.mgr.Status(cs.c.Name)
	if !ok || st.Instance != cs.instance {
		st = cs.lastProbes
	}
	s := ContainerStatus{
		Name: cs.c.Name, ID: cs.id, State: cs.state, PID: cs.pid, RestartCount: cs.restarts,
		Started: started, Ready: ready, NotReadyReason: reason, LastExitCode: cs.lastExit, Message: cs.message,
		Probes: map[string]*prober.ProbeStatus{}, GPUs: a.gpuStatus(cs),
	}
	for _, t := range service.ProbeTypes {
		if st.Probes[t] != nil {
			s.Probes[t.String()] = st.Probes[t]
		} else if cs.c.Spec == nil {
			continue
		} else if c := cs.c.Spec.Check(t); c != nil {
			s.Probes[t.String()] = &prober.ProbeStatus{Method: c.Method(), Result: "unknown", History: []prober.HistoryEntry{}}
		}
	}
	return s
}

// Healthy reports whether the agent's loop is running and recently alive.
func (a *Agent) Healthy() bool {
	return a.running.Load() && time.Since(time.Unix(0, a.loopBeat.Load())) < 10*time.Second
}

// Ready reports whether the agent is healthy and its runtime reachable.
func (a *Agent) Ready() bool { return a.Healthy() && a.rt.Connected() }
