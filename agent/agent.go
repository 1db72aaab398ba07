// Package agent is the small brain that wires the runtime, the prober and the metrics:
// runtime events register probes, probe transitions become actions (stop, restart per
// policy with back-off), and everything is reported through logs, metrics and the
// status API.
//
// Its files, by what they do:
//   - agent.go: Options, New and the Run loop that serialises every input;
//   - events.go: runtime events → containers known, probes registered;
//   - actions.go: probe transitions → stop, restart per policy, back-off;
//   - status.go: readiness, the gauges and the status API's JSON types;
//   - state.go: what survives an agent restart, saved and restored;
//   - gpu.go: containers mapped to GPUs, GPU health folded into readiness;
//   - server.go: the HTTP interface.
package agent

import (
	"context"
	"errors"
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
	// Kubernetes, when set, takes verdicts to the API server: readiness gates, Events,
	// the node's GPU condition.
	Kubernetes Kubernetes
}

// Agent runs probes against a runtime's containers and acts on their results.
type Agent struct {
	opts Options
	kube Kubernetes
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

	saved savedState // what the previous agent left, read at start
	// dirty says the state changed since it was last written (guarded by mu); saveNow
	// wakes the saver. lastSaved and saveFailing belong to whoever saves: the saver
	// goroutine while it runs, shutdown after.
	dirty       bool
	saveNow     chan struct{}
	lastSaved   string
	saveFailing bool
	saves       atomic.Int64 // state files written, for tests

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
	// timer is the pending restart, restartReason what it will be counted as.
	timer         *time.Timer
	restartReason string
	// lastProbes keeps the probe state of the last instance after it stopped, so that
	// the status API still shows why.
	lastProbes prober.Status
	// gpus are the GPUs the container uses; gpuBad lists the Unhealthy ones, as last
	// reported.
	gpus   []gpu.Device
	gpuBad []string
}

// exitReason is why the last instance ended, as a restart reason: what the runtime
// said (ev.Reason), else the probe type that stopped it, else "exited".
func (cs *containerState) exitReason(ev runtime.Event) string {
	switch {
	case ev.Reason != "":
		return ev.Reason
	case cs.stopReason != "":
		return cs.stopReason
	}
	return "exited"
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
	a := &Agent{opts: opts, kube: opts.Kubernetes, rt: opts.Runtime, log: opts.Logger, m: opts.Metrics, ctrs: map[string]*containerState{},
		gpus: map[string]gpu.Status{}, gpuMon: opts.GPU, unavailable: opts.GPUUnavailable, attach: make(chan *gpu.Monitor, 1), saveNow: make(chan struct{}, 1)}
	po := opts.Prober
	po.Logger = opts.Logger
	if a.m != nil {
		po.Recorder = recorder{a.m}
		if rt, ok := opts.Runtime.(execPathReporter); ok {
			a.m.EnableExecPaths()
			rt.ReportExecPaths(a.m.ExecPath)
		}
	}
	a.mgr = prober.NewManager(po)
	return a
}

// Manager returns the agent's probe manager.
func (a *Agent) Manager() *prober.Manager { return a.mgr }

// execPathReporter is a runtime that runs exec probes more than one way and says
// which way each went.
type execPathReporter interface {
	ReportExecPaths(func(path string))
}

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
	a.restoreSaved()
	r := a.start()
	a.running.Store(true)
	defer a.running.Store(false)
	return a.shutdown(r, a.loop(ctx, r))
}

// run is what one Run started: the probe manager, the runtime and the GPU monitor,
// each with its own context, so that they stop in order.
type run struct {
	events          chan runtime.Event
	stopMgr, stopRt context.CancelFunc
	mgrCtx          context.Context
	mgrDone, rtDone chan error
	gpuNotify       <-chan struct{}
	gpuRuns         sync.WaitGroup
	stopSaver       chan struct{}
	saverDone       sync.WaitGroup
}

func (a *Agent) start() *run {
	mgrCtx, stopMgr := context.WithCancel(context.Background())
	rtCtx, stopRt := context.WithCancel(context.Background())
	r := &run{events: make(chan runtime.Event, 1024), mgrCtx: mgrCtx, stopMgr: stopMgr, stopRt: stopRt,
		mgrDone: make(chan error, 1), rtDone: make(chan error, 1)}
	a.mu.Lock()
	a.runCtx = rtCtx
	a.mu.Unlock()
	if a.opts.StateDir != "" {
		r.stopSaver = make(chan struct{})
		r.saverDone.Go(func() { a.saver(r.stopSaver) })
	}
	go func() { r.mgrDone <- a.mgr.Run(mgrCtx) }()
	go func() { r.rtDone <- a.rt.Run(rtCtx, r.events) }()
	if a.opts.GPU != nil {
		r.startGPU(a.opts.GPU)
	}
	return r
}

func (r *run) startGPU(mon *gpu.Monitor) {
	r.gpuNotify = mon.Notify()
	r.gpuRuns.Go(func() { mon.Run(r.mgrCtx) })
}

// loop takes every input on one goroutine, in order: runtime events, probe
// transitions, GPU changes. It returns when ctx ends or the runtime stops.
func (a *Agent) loop(ctx context.Context, r *run) error {
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	var buf []prober.Transition
	a.loopBeat.Store(time.Now().UnixNano())
	a.mu.Lock()
	a.nodeGPU()
	a.mu.Unlock()
	synced := a.kube == nil
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			a.handleEvent(ev)
		case <-a.mgr.Notify():
			buf = a.mgr.Drain(buf[:0])
			for _, tr := range buf {
				a.handleTransition(tr)
			}
		case <-r.gpuNotify:
			a.gpuChanged()
		case mon := <-a.attach:
			if r.gpuNotify == nil {
				a.attached(mon)
				r.startGPU(mon)
			}
		case err := <-r.rtDone:
			if err == nil {
				err = errors.New("runtime stopped unexpectedly")
			}
			return err
		case <-beat.C:
		}
		a.loopBeat.Store(time.Now().UnixNano())
		if !synced && a.rt.Connected() && len(r.events) == 0 {
			// Saved state restored and the runtime's first listing taken: the
			// Kubernetes side may write conditions now without a flip on the way.
			synced = true
			a.kube.SetSynced()
		}
	}
}

// shutdown stops probing and pending restarts, then the runtime, taking its last
// events, and saves the state. It returns the runtime's error.
func (a *Agent) shutdown(r *run, rtErr error) error {
	a.log.Info("shutting down")
	a.mu.Lock()
	a.closing = true
	for _, cs := range a.ctrs {
		if cs.timer != nil && cs.timer.Stop() {
			a.pending.Done()
		}
	}
	a.mu.Unlock()
	r.stopMgr()
	<-r.mgrDone
	r.gpuRuns.Wait()
	r.stopRt()
	if rtErr == nil {
		// Keep taking events until the runtime has stopped what it runs.
		for done := false; !done; {
			select {
			case ev := <-r.events:
				a.handleEvent(ev)
			case rtErr = <-r.rtDone:
				done = true
			}
		}
	}
	a.pending.Wait()
	if r.stopSaver != nil {
		close(r.stopSaver)
		r.saverDone.Wait()
		a.mu.Lock()
		a.persist()
		a.mu.Unlock()
		_ = a.save() // a failure is logged; nothing more can be done on the way out
	}
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

func metricsName(cs *containerState) metrics.Container {
	return metrics.Container{Namespace: cs.c.Namespace, Pod: cs.c.Pod, Name: cs.c.Container}
}
