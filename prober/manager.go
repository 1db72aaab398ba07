package prober

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/probe-agent/probe-agent/prober/pool"
	"github.com/probe-agent/probe-agent/prober/wheel"
	"github.com/probe-agent/probe-agent/service"
)

// Labels identify a container in metrics; Namespace and Pod are empty outside Kubernetes.
type Labels struct {
	Namespace, Pod, Container string
}

// Recorder receives every probe result and the scheduler's lateness (how long after
// its due time each probe started running); the metrics package provides one.
type Recorder interface {
	ObserveProbe(l Labels, t service.ProbeType, method string, o Outcome, d time.Duration)
	ObserveLateness(d time.Duration)
}

// Instance is one run of a container as the Manager probes it. A new Instance (a
// restart) resets every probe, as a new container ID does in the kubelet.
type Instance struct {
	// ID is the container's stable name; Instance names this run of it.
	ID, Instance string
	Labels       Labels
	Target       Target
	// Checks holds the check of each probe type, or nil.
	Checks    [3]*service.Check
	StartedAt time.Time
	// Adopted says the agent found the container already running: first probes are
	// spread uniformly over one period instead of all firing at once.
	Adopted bool
	// Restore, for an adopted instance, carries what an earlier agent knew of it.
	Restore *Restore
}

// Restore is the probe state an agent saved for a container instance, so that after an
// agent restart a started container is not startup-gated again and a ready one does not
// turn not-ready.
type Restore struct {
	Started   bool
	Readiness Value
}

// Transition is a change of a probe's published value.
type Transition struct {
	ID, Instance string
	Labels       Labels
	Type         service.ProbeType
	Method       string
	From, To     Value
	// Consecutive is how many results in a row led to the change; Threshold is what
	// it had to reach.
	Consecutive, Threshold int
	Result                 Result
	At                     time.Time
}

// Record is one probe result as the Manager keeps it.
type Record struct {
	Time    time.Time
	Outcome Outcome
	// Output is the result's output, cut to MaxRecordOutput bytes.
	Output string
	Took   time.Duration
}

// MaxRecordOutput bounds the output kept with each Record.
const MaxRecordOutput = 256

// ProbeDetail is one probe's state with its recent results.
type ProbeDetail struct {
	Method string
	// Value is the probe's published value.
	Value                Value
	ConsecutiveSuccesses int
	ConsecutiveFailures  int
	// History holds the last results, oldest first; the last one is the latest.
	History []Record
}

// Last returns the latest result, if there is one.
func (d *ProbeDetail) Last() (Record, bool) {
	if len(d.History) == 0 {
		return Record{}, false
	}
	return d.History[len(d.History)-1], true
}

// Status is the probe state of one container instance.
type Status struct {
	Instance string
	// Started is true once the startup probe succeeded, or at once without one.
	Started bool
	// Values holds each probe type's published value; Has says which types exist.
	Values [3]Value
	Has    [3]bool
	// Probes holds each probe's detail (Status only, not Summary).
	Probes [3]*ProbeDetail
}

// Options configure a Manager.
type Options struct {
	// Workers bounds how many network probes (http_get, tcp_socket, grpc) run at once
	// (default 64).
	Workers int
	// MaxConcurrentExec bounds exec probes running at once (default 8). Exec probes
	// have workers of their own, so that a backlog of them never holds up a network
	// probe.
	MaxConcurrentExec int
	// Resolution is the timer wheel's tick (default 1 ms).
	Resolution time.Duration
	// History is how many results each probe keeps for the status API (default 10).
	History int
	// Settings apply to every probe.
	Settings Settings
	Clock    clockwork.Clock
	Logger   *zap.Logger
	Recorder Recorder
}

// maxRetries is how often a probe that could not run is tried before its result is
// discarded, as in the kubelet.
const maxRetries = 3

// Manager schedules every registered probe on one timer wheel and runs due probes on
// bounded pools of workers, one for network probes and one for exec probes: no
// goroutine per probe, and a probe never overlaps itself. Transitions come out in the
// order they happened through Notify and Drain.
type Manager struct {
	opts   Options
	driver *wheel.Driver

	network, exec *pool.Pool[*probe]

	mu          sync.Mutex
	groups      map[string]*group
	transitions []Transition
	notify      chan struct{}
}

type group struct {
	inst    Instance
	probes  [3]*probe
	started bool
}

type probe struct {
	timer   wheel.Timer
	g       *group
	typ     service.ProbeType
	check   *service.Check
	method  string
	state   State
	stopped bool // unregistered or paused: results are discarded, no re-arm
	queued  bool
	due     time.Time

	last    *Record
	history []Record // ring
	next    int
	// failingLogged is set once a failure that changed nothing (a readiness probe
	// failing from the start) has been logged, until the next success.
	failingLogged bool
}

// NewManager returns a Manager; call Run to start it.
func NewManager(opts Options) *Manager {
	if opts.Workers <= 0 {
		opts.Workers = 64
	}
	if opts.MaxConcurrentExec <= 0 {
		opts.MaxConcurrentExec = 8
	}
	if opts.Resolution <= 0 {
		opts.Resolution = time.Millisecond
	}
	if opts.History <= 0 {
		opts.History = 10
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	m := &Manager{
		opts:   opts,
		groups: map[string]*group{},
		notify: make(chan struct{}, 1),
	}
	m.network = pool.New(opts.Workers, m.work)
	m.exec = pool.New(opts.MaxConcurrentExec, m.work)
	m.driver = wheel.NewDriver(opts.Clock, opts.Resolution, m.fire)
	return m
}

// Run drives the wheel and the workers until ctx ends, then waits for running probes.
func (m *Manager) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		m.driver.Run(ctx)
		return nil
	})
	g.Go(func() error { return m.network.Run(ctx) })
	g.Go(func() error { return m.exec.Run(ctx) })
	return g.Wait()
}

// Scheduled returns the number of probes waiting on the wheel.
func (m *Manager) Scheduled() int { return m.driver.Len() }

// Register starts probing a container instance, replacing any earlier instance with the
// same ID. With a startup check only startup runs until it succeeds; each probe first
// runs at StartedAt plus its initial delay.
func (m *Manager) Register(inst Instance) {
	now := m.opts.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.groups[inst.ID]; old != nil {
		m.stopGroup(old)
	}
	g := &group{inst: inst, started: inst.Checks[service.Startup] == nil}
	if inst.Restore != nil && inst.Restore.Started {
		g.started = true
	}
	for _, t := range service.ProbeTypes {
		c := inst.Checks[t]
		if c == nil {
			continue
		}
		p := &probe{g: g, typ: t, check: c, method: c.Method(),
			state: NewState(t, c.SuccessThreshold, c.FailureThreshold)}
		p.timer.Value = p
		g.probes[t] = p
		if rs := inst.Restore; rs != nil {
			switch {
			case t == service.Startup && rs.Started:
				p.state.Value, p.state.OnHold = ValueSuccess, true
			case t == service.Readiness && rs.Readiness != ValueUnknown:
				p.state.Value = rs.Readiness
			}
		}
	}
	m.groups[inst.ID] = g
	if g.started {
		m.schedule(g.probes[service.Liveness], now, inst.Adopted)
		m.schedule(g.probes[service.Readiness], now, inst.Adopted)
	} else {
		m.schedule(g.probes[service.Startup], now, inst.Adopted)
	}
}

// schedule arms p for its first run: at the container's start plus the initial delay,
// and no earlier than now (plus jitter within one period when spreading the probes of
// containers the agent adopted).
func (m *Manager) schedule(p *probe, now time.Time, jitter bool) {
	if p == nil {
		return
	}
	at := p.g.inst.StartedAt.Add(p.check.InitialDelaySeconds.D())
	if !jitter {
		m.driver.Add(&p.timer, later(at, now))
		return
	}
	// A jittered first run is arbitrary within its period anyway: let it share
	// wake-ups like a periodic one.
	period := p.check.PeriodSeconds.D()
	m.driver.AddSlack(&p.timer, later(at, now.Add(time.Duration(rand.Int64N(int64(period))))), wheel.Slack(period))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Unregister stops every probe of a container; results of probes still running are
// discarded.
func (m *Manager) Unregister(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.groups[id]; g != nil {
		m.stopGroup(g)
		delete(m.groups, id)
	}
}

// Pause stops the liveness and startup probes of a container that is terminating;
// readiness keeps running.
func (m *Manager) Pause(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.groups[id]; g != nil {
		m.stopProbe(g.probes[service.Liveness])
		m.stopProbe(g.probes[service.Startup])
	}
}

func (m *Manager) stopGroup(g *group) {
	for _, p := range g.probes {
		m.stopProbe(p)
	}
}

func (m *Manager) stopProbe(p *probe) {
	if p == nil {
		return
	}
	p.stopped = true
	m.driver.Cancel(&p.timer)
}

// fire is called by the driver for each due probe: it only queues the probe on its
// method's lane.
func (m *Manager) fire(t *wheel.Timer, due time.Time) {
	p := t.Value.(*probe)
	m.mu.Lock()
	push := !p.stopped && !p.queued
	if push {
		p.queued, p.due = true, due
	}
	m.mu.Unlock()
	switch {
	case !push:
	case p.method == service.MethodExec:
		m.exec.Push(p)
	default:
		m.network.Push(p)
	}
}

// work runs one due probe on a pool worker.
func (m *Manager) work(ctx context.Context, p *probe) {
	m.mu.Lock()
	p.queued = false
	stopped, due := p.stopped, p.due
	m.mu.Unlock()
	if stopped {
		return
	}
	if r := m.opts.Recorder; r != nil {
		r.ObserveLateness(m.opts.Clock.Since(due))
	}
	m.runProbe(ctx, p)
}

// runProbe runs p (retrying a probe that could not run), then updates its state and
// re-arms it, all under the lock so that a concurrent Unregister wins cleanly.
func (m *Manager) runProbe(ctx context.Context, p *probe) {
	inst := &p.g.inst
	var r Result
	var took time.Duration
	for range maxRetries {
		start := m.opts.Clock.Now()
		r = Run(ctx, inst.Target, p.check, m.opts.Settings)
		took = m.opts.Clock.Since(start)
		if r.Outcome != Unknown || ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil {
		return
	}
	now := m.opts.Clock.Now()
	if rec := m.opts.Recorder; rec != nil {
		rec.ObserveProbe(inst.Labels, p.typ, p.method, r.Outcome, took)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if p.stopped {
		return
	}
	if r.Outcome == Warning && (p.last == nil || p.last.Outcome != Warning || p.last.Output != r.Output) {
		m.opts.Logger.Warn("probe warning",
			zap.String("container", inst.ID), zap.String("probe", p.typ.String()),
			zap.String("method", p.method), zap.String("output", r.Output))
	}
	p.record(Record{Time: now, Outcome: r.Outcome, Output: r.Output, Took: took}, m.opts.History)
	if r.Outcome == Unknown {
		m.opts.Logger.Warn("probe error",
			zap.String("container", inst.ID), zap.String("probe", p.typ.String()),
			zap.String("method", p.method), zap.Int("attempts", maxRetries), zap.String("error", r.Output))
	}
	from := p.state.Value
	changed := p.state.Observe(r.Outcome)
	if _, fails := p.state.Consecutive(); !changed && fails >= p.state.FailureThreshold && !p.failingLogged {
		// A readiness probe that never succeeded publishes no change; say once why the
		// container is not ready.
		p.failingLogged = true
		m.opts.Logger.Warn("probe failing",
			zap.String("container", inst.ID), zap.String("probe", p.typ.String()), zap.String("method", p.method),
			zap.Int("consecutive", fails), zap.Int("threshold", p.state.FailureThreshold), zap.String("output", r.Output))
	} else if r.Outcome == Success || r.Outcome == Warning {
		p.failingLogged = false
	}
	if changed && p.state.Value == ValueFailure {
		p.failingLogged = true // the transition itself was logged
	}
	if changed {
		succ, fail := p.state.Consecutive()
		m.transitions = append(m.transitions, Transition{
			ID: inst.ID, Instance: inst.Instance, Labels: inst.Labels, Type: p.typ, Method: p.method,
			From: from, To: p.state.Value, Consecutive: max(succ, fail), Threshold: p.state.Threshold(p.state.Value),
			Result: r, At: now,
		})
		select {
		case m.notify <- struct{}{}:
		default:
		}
	}
	if p.typ == service.Startup && p.state.Value == ValueSuccess && !p.g.started {
		p.g.started = true
		m.schedule(p.g.probes[service.Liveness], now, false)
		m.schedule(p.g.probes[service.Readiness], now, false)
	}
	if p.state.OnHold {
		return
	}
	// Next run one period after the last due time; periods missed by a slow probe are
	// skipped, as a ticker drops ticks.
	period := p.check.PeriodSeconds.D()
	next := p.due.Add(period)
	if !next.After(now) {
		next = next.Add((now.Sub(next)/period + 1) * period)
	}
	m.driver.AddSlack(&p.timer, next, wheel.Slack(period))
}

func (p *probe) record(e Record, n int) {
	if len(e.Output) > MaxRecordOutput {
		e.Output = e.Output[:MaxRecordOutput] + "..."
	}
	if len(p.history) < n {
		p.history = append(p.history, e)
		p.last = &p.history[len(p.history)-1]
		return
	}
	p.history[p.next] = e
	p.last = &p.history[p.next]
	p.next = (p.next + 1) % n
}

// Notify is signalled when transitions are waiting to be drained.
func (m *Manager) Notify() <-chan struct{} { return m.notify }

// Drain appends the waiting transitions to buf, oldest first, and returns it.
func (m *Manager) Drain(buf []Transition) []Transition {
	m.mu.Lock()
	defer m.mu.Unlock()
	buf = append(buf, m.transitions...)
	clear(m.transitions)
	m.transitions = m.transitions[:0]
	return buf
}

// Status returns the probe state of a registered container, with each probe's detail
// and history for the status API.
func (m *Manager) Status(id string) (Status, bool) { return m.status(id, true) }

// Summary returns what Status does without the per-probe detail: instance, started and
// each probe's published value. It copies no history.
func (m *Manager) Summary(id string) (Status, bool) { return m.status(id, false) }

func (m *Manager) status(id string, detail bool) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.groups[id]
	if g == nil {
		return Status{}, false
	}
	st := Status{Instance: g.inst.Instance, Started: g.started}
	for t, p := range g.probes {
		if p == nil {
			continue
		}
		st.Has[t] = true
		st.Values[t] = p.state.Value
		if !detail {
			continue
		}
		succ, fail := p.state.Consecutive()
		d := &ProbeDetail{Method: p.method, Value: p.state.Value,
			ConsecutiveSuccesses: succ, ConsecutiveFailures: fail, History: make([]Record, 0, len(p.history))}
		// Oldest first.
		d.History = append(d.History, p.history[p.next:]...)
		d.History = append(d.History, p.history[:p.next]...)
		st.Probes[t] = d
	}
	return st, true
}
