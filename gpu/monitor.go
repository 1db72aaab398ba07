package gpu

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Status is one GPU's latest state.
type Status struct {
	Device  Device
	Sample  *Sample
	Verdict Verdict
	// XIDs counts the XID events seen per XID number since the agent started; LastXID
	// is the latest one (0 for none).
	XIDs    map[uint64]uint64
	LastXID uint64
}

// Snapshot is what the monitor knows of every GPU.
type Snapshot struct {
	// Up says whether GPU data is flowing (NVML initialised and the last poll worked).
	Up            bool
	DriverVersion string
	GPUs          []Status
	// NVMLErrors counts failed NVML calls by call and error since the agent started.
	NVMLErrors map[CallError]uint64
}

// ErrPollTimeout says a poll did not finish in time: a GPU may be wedged.
var ErrPollTimeout = errors.New("GPU poll timed out (a GPU may be wedged)")

// Monitor polls a Source, follows its events and keeps each GPU's verdict. It logs one
// line per event and one per health transition, never one per poll.
type Monitor struct {
	src      Source
	pol      Policy
	interval time.Duration
	log      *zap.Logger

	mu      sync.Mutex
	devs    []Device
	status  map[string]*Status
	pending map[string][]Event
	up      bool
	errs    map[CallError]uint64
	notify  chan struct{}
}

// NewMonitor returns a monitor of src that polls every interval (default 10 s).
func NewMonitor(src Source, pol Policy, interval time.Duration, log *zap.Logger) *Monitor {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	m := &Monitor{src: src, pol: pol, interval: interval, log: log, devs: src.Devices(),
		status: map[string]*Status{}, pending: map[string][]Event{}, errs: map[CallError]uint64{},
		notify: make(chan struct{}, 1)}
	for _, d := range m.devs {
		m.status[d.UUID] = &Status{Device: d, XIDs: map[uint64]uint64{}}
	}
	return m
}

// Devices returns the GPUs the monitor watches.
func (m *Monitor) Devices() []Device { return m.devs }

// Notify is signalled when a GPU's verdict changes.
func (m *Monitor) Notify() <-chan struct{} { return m.notify }

// Run polls and follows events until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	m.Poll(ctx)
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	events := m.src.Events()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			m.Poll(ctx)
		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Take every event already queued, then poll once if one of them can
			// change a verdict: a fatal XID is acted on now, not at the next tick,
			// and a storm of single-bit ECC events costs no polls.
			act := m.event(e)
			for queued := true; queued && events != nil; {
				select {
				case e, ok := <-events:
					if !ok {
						events = nil
						continue
					}
					act = m.event(e) || act
				default:
					queued = false
				}
			}
			if act {
				m.Poll(ctx)
			}
		}
	}
}

// event records one event and reports whether it can change a verdict (Evaluate acts
// on fatal and warning XIDs, double-bit ECC, lost or unavailable GPUs; a recovery
// action is read by the poll).
func (m *Monitor) event(e Event) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.status[e.UUID]
	if !ok {
		return false
	}
	fields := []zap.Field{zap.String("gpu_uuid", e.UUID), zap.Int("gpu_index", st.Device.Index), zap.String("kind", e.Kind.String())}
	if e.Kind == EventXID {
		st.XIDs[e.XID]++
		st.LastXID = e.XID
		fields = append(fields, zap.Uint64("xid", e.XID), zap.String("xid_name", XIDName(e.XID)),
			zap.String("severity", m.pol.Severity(e.XID).String()))
	}
	if e.GI != NoInstance {
		fields = append(fields, zap.Uint32("gi", e.GI), zap.Uint32("ci", e.CI))
	}
	m.log.Warn("gpu event", fields...)
	m.pending[e.UUID] = append(m.pending[e.UUID], e)
	switch e.Kind {
	case EventSBE:
		return false
	case EventXID:
		return m.pol.Severity(e.XID) != SeverityIgnore
	}
	return true
}

// Poll samples every GPU and re-evaluates its verdict with the events since the last
// poll. A failed poll makes every verdict Unknown, which never takes readiness away.
func (m *Monitor) Poll(ctx context.Context) {
	samples, err := m.src.Sample(ctx)
	if err != nil {
		samples = nil // nothing from a failed poll is trusted
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil && m.up {
		m.log.Warn("gpu poll failed", zap.Error(err))
	}
	m.up = err == nil
	if err != nil {
		ret := "ERROR_UNKNOWN"
		if errors.Is(err, ErrPollTimeout) {
			ret = "ERROR_TIMEOUT"
		}
		m.errs[CallError{Call: "poll", Return: ret}]++
	}
	for _, sm := range samples {
		for _, ce := range sm.Errors {
			m.errs[ce]++
		}
	}
	byUUID := map[string]*Sample{}
	for i := range samples {
		byUUID[samples[i].UUID] = &samples[i]
	}
	now := time.Now()
	changed := false
	for _, d := range m.devs {
		st := m.status[d.UUID]
		cur := byUUID[d.UUID]
		v := Evaluate(st.Verdict, st.Sample, cur, m.pending[d.UUID], now, m.pol)
		delete(m.pending, d.UUID)
		if v.State != st.Verdict.State {
			changed = true
			level := zap.InfoLevel
			if v.State == Unhealthy {
				level = zap.ErrorLevel
			}
			fields := []zap.Field{zap.String("gpu_uuid", d.UUID), zap.Int("gpu_index", d.Index),
				zap.String("from", st.Verdict.State.String()), zap.String("to", v.State.String()), zap.String("reasons", v.Codes())}
			if x := v.XID(); x != 0 {
				fields = append(fields, zap.Uint64("xid", x), zap.String("xid_name", XIDName(x)),
					zap.String("severity", m.pol.Severity(x).String()))
			}
			m.log.Log(level, "gpu health changed", fields...)
		}
		st.Verdict = v
		if cur != nil {
			st.Sample = cur
		}
	}
	if changed {
		select {
		case m.notify <- struct{}{}:
		default:
		}
	}
}

// Snapshot returns a copy of every GPU's state, in index order.
func (m *Monitor) Snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Snapshot{Up: m.up, DriverVersion: m.src.DriverVersion(), NVMLErrors: make(map[CallError]uint64, len(m.errs))}
	for k, v := range m.errs {
		s.NVMLErrors[k] = v
	}
	for _, d := range m.devs {
		st := *m.status[d.UUID]
		xids := make(map[uint64]uint64, len(st.XIDs))
		for k, v := range st.XIDs {
			xids[k] = v
		}
		st.XIDs = xids
		s.GPUs = append(s.GPUs, st)
	}
	sort.Slice(s.GPUs, func(i, j int) bool { return s.GPUs[i].Device.Index < s.GPUs[j].Device.Index })
	return s
}
