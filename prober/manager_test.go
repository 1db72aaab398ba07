package prober

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scriptTarget answers exec probes from a function and records when each ran.
type scriptTarget struct {
	mu      sync.Mutex
	runs    map[string][]time.Time // by argv[0]
	active  map[string]int
	overlap atomic.Bool
	answer  func(name string, n int) (int, error)
	hold    time.Duration
}

func newScript(answer func(name string, n int) (int, error)) *scriptTarget {
	return &scriptTarget{runs: map[string][]time.Time{}, active: map[string]int{}, answer: answer}
}

func (s *scriptTarget) Host() string { return "127.0.0.1" }
func (s *scriptTarget) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	s.mu.Lock()
	s.runs["dial "+addr] = append(s.runs["dial "+addr], time.Now())
	s.mu.Unlock()
	return nil, fmt.Errorf("no network here")
}

func (s *scriptTarget) Exec(ctx context.Context, argv []string, out io.Writer) (int, error) {
	name := argv[0]
	s.mu.Lock()
	s.runs[name] = append(s.runs[name], time.Now())
	n := len(s.runs[name])
	s.active[name]++
	if s.active[name] > 1 {
		s.overlap.Store(true)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.active[name]--
		s.mu.Unlock()
	}()
	if s.hold > 0 {
		select {
		case <-time.After(s.hold):
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
	return s.answer(name, n)
}

func (s *scriptTarget) times(name string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.runs[name]...)
}

func execCheck(t service.ProbeType, name string, period, delay time.Duration) *service.Check {
	c := service.DefaultCheck(t)
	c.Exec = &service.Exec{Command: []string{name}}
	c.PeriodSeconds = service.Seconds(period)
	c.InitialDelaySeconds = service.Seconds(delay)
	return c
}

func startManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	m := NewManager(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// The Manager tests run in a testing/synctest bubble: the Manager's clock, its timer
// wheel, the probes' timeouts and the scripted targets all run on the bubble's fake
// time, which advances only when every goroutine is blocked. Waits are exact, and a
// test takes as long as its probes' work, not their periods.

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	await.Until(t, 10*time.Second, what, cond)
}

// settle lets fake time pass and every goroutine woken on the way finish what it does
// at that instant.
func settle(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func drainAll(m *Manager) []Transition { return m.Drain(nil) }

func TestFirstProbeExactlyAtInitialDelay(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		start := time.Now()
		m.Register(Instance{ID: "c", Instance: "1", Target: tg, StartedAt: start,
			Checks: [3]*service.Check{service.Liveness: execCheck(service.Liveness, "live", 10*time.Second, 300*time.Millisecond)}})
		waitFor(t, "first probe", func() bool { return len(tg.times("live")) == 1 })
		first := tg.times("live")[0].Sub(start)
		if first < 300*time.Millisecond || first > 301*time.Millisecond { // one wheel tick
			t.Fatalf("first probe after %v, want 300ms, within one 1ms tick (not a period later)", first)
		}
	})
}

func TestStartupGatesAndReadinessRunsAtOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(name string, n int) (int, error) {
			if name == "startup" && n < 4 {
				return 1, nil
			}
			return 0, nil
		})
		start := time.Now()
		m.Register(Instance{ID: "c", Instance: "1", Target: tg, StartedAt: start, Checks: [3]*service.Check{
			service.Startup:   withFailure(execCheck(service.Startup, "startup", 50*time.Millisecond, 0), 10),
			service.Liveness:  execCheck(service.Liveness, "live", 30*time.Second, 0),
			service.Readiness: execCheck(service.Readiness, "ready", 30*time.Second, 0),
		}})
		waitFor(t, "startup success", func() bool { st, _ := m.Status("c"); return st.Started })
		startupDone := tg.times("startup")[3]
		waitFor(t, "readiness", func() bool { st, _ := m.Status("c"); return st.Values[service.Readiness] == ValueSuccess })
		if r := tg.times("ready"); len(r) != 1 || r[0].Before(startupDone) || r[0].Sub(startupDone) > 200*time.Millisecond {
			t.Fatalf("readiness ran at %v after startup success, want at once", r[0].Sub(startupDone))
		}
		if l := tg.times("live"); len(l) == 0 || l[0].Before(startupDone) {
			t.Fatalf("liveness ran before startup succeeded: %v", l)
		}
		settle(200 * time.Millisecond)
		if n := len(tg.times("startup")); n != 4 {
			t.Fatalf("startup kept probing after success: %d runs", n)
		}
		var seen []string
		for _, tr := range drainAll(m) {
			seen = append(seen, fmt.Sprintf("%s:%s->%s", tr.Type, tr.From, tr.To))
		}
		want := map[string]bool{"startup:unknown->success": true, "readiness:failure->success": true}
		if len(seen) != 2 || !want[seen[0]] || !want[seen[1]] {
			t.Fatalf("transitions %v", seen)
		}
	})
}

func withFailure(c *service.Check, n int) *service.Check { c.FailureThreshold = n; return c }

func TestLivenessFailureHoldsUntilNewInstance(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(string, int) (int, error) { return 1, nil })
		inst := Instance{ID: "c", Instance: "1", Target: tg, StartedAt: time.Now(),
			Checks: [3]*service.Check{service.Liveness: withFailure(execCheck(service.Liveness, "live", 20*time.Millisecond, 0), 3)}}
		m.Register(inst)
		waitFor(t, "liveness failure", func() bool { st, _ := m.Status("c"); return st.Values[service.Liveness] == ValueFailure })
		trs := drainAll(m)
		if len(trs) != 1 || trs[0].Consecutive != 3 || trs[0].Threshold != 3 || trs[0].To != ValueFailure || trs[0].Instance != "1" {
			t.Fatalf("transitions %+v", trs)
		}
		settle(150 * time.Millisecond)
		if n := len(tg.times("live")); n != 3 {
			t.Fatalf("liveness probed %d times; it should hold after 3", n)
		}
		inst.Instance = "2"
		m.Register(inst)
		waitFor(t, "new instance probed", func() bool { return len(tg.times("live")) > 3 })
		if st, _ := m.Status("c"); st.Instance != "2" {
			t.Fatalf("status instance %q", st.Instance)
		}
	})
}

func TestProbeNeverOverlapsItself(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{Workers: 8})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		tg.hold = 120 * time.Millisecond // longer than the period
		c := execCheck(service.Readiness, "slow", 20*time.Millisecond, 0)
		c.TimeoutSeconds = service.Seconds(time.Second)
		m.Register(Instance{ID: "c", Instance: "1", Target: tg, StartedAt: time.Now(), Checks: [3]*service.Check{service.Readiness: c}})
		settle(600 * time.Millisecond)
		if tg.overlap.Load() {
			t.Fatal("a probe overlapped itself")
		}
		if n := len(tg.times("slow")); n < 3 || n > 6 {
			t.Fatalf("%d runs in 600ms of 120ms probes", n)
		}
	})
}

type unavailableErr struct{}

func (unavailableErr) Error() string     { return "task not found" }
func (unavailableErr) Unavailable() bool { return true }

func TestErrorsRetriedThenDiscarded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(string, int) (int, error) { return -1, unavailableErr{} })
		m.Register(Instance{ID: "c", Instance: "1", Target: tg, StartedAt: time.Now(),
			Checks: [3]*service.Check{service.Liveness: execCheck(service.Liveness, "live", time.Hour, 0)}})
		waitFor(t, "three attempts", func() bool { return len(tg.times("live")) == maxRetries })
		settle(50 * time.Millisecond)
		st, _ := m.Status("c")
		if len(tg.times("live")) != maxRetries || st.Values[service.Liveness] != ValueSuccess || len(drainAll(m)) != 0 {
			t.Fatalf("an error changed the state: runs=%d value=%v", len(tg.times("live")), st.Values[service.Liveness])
		}
		if p := st.Probes[service.Liveness]; p.History[len(p.History)-1].Output != "task not found" || p.History[0].Outcome != Unknown {
			t.Fatalf("error not visible in status: %+v", p)
		}
	})
}

func TestPauseStopsLivenessKeepsReadiness(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		m.Register(Instance{ID: "c", Instance: "1", Target: tg, StartedAt: time.Now(), Checks: [3]*service.Check{
			service.Liveness:  execCheck(service.Liveness, "live", 20*time.Millisecond, 0),
			service.Readiness: execCheck(service.Readiness, "ready", 20*time.Millisecond, 0),
		}})
		waitFor(t, "both probes", func() bool { return len(tg.times("live")) > 0 && len(tg.times("ready")) > 0 })
		m.Pause("c")
		settle(30 * time.Millisecond)
		l, r := len(tg.times("live")), len(tg.times("ready"))
		settle(150 * time.Millisecond)
		if len(tg.times("live")) != l {
			t.Fatal("liveness ran while paused")
		}
		if len(tg.times("ready")) <= r {
			t.Fatal("readiness stopped while paused")
		}
		m.Unregister("c")
		settle(30 * time.Millisecond)
		r = len(tg.times("ready"))
		settle(100 * time.Millisecond)
		if len(tg.times("ready")) != r || m.Scheduled() != 0 {
			t.Fatal("probes ran after Unregister")
		}
		if _, ok := m.Status("c"); ok {
			t.Fatal("status kept after Unregister")
		}
	})
}

func TestAdoptedContainersAreSpreadOverOnePeriod(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		start := time.Now()
		for i := range 50 {
			m.Register(Instance{ID: fmt.Sprint(i), Instance: "1", Target: tg, StartedAt: start.Add(-time.Hour), Adopted: true,
				Checks: [3]*service.Check{service.Readiness: execCheck(service.Readiness, "r", 500*time.Millisecond, 0)}})
		}
		waitFor(t, "all first probes", func() bool { return len(tg.times("r")) >= 50 })
		first, last := time.Hour, time.Duration(0)
		for _, at := range tg.times("r")[:50] {
			d := at.Sub(start)
			first, last = min(first, d), max(last, d)
		}
		if last-first < 200*time.Millisecond || last > 700*time.Millisecond {
			t.Fatalf("first probes spread over [%v, %v], want spread across one 500ms period", first, last)
		}
	})
}

type countingRecorder struct{ probes, lateness atomic.Int64 }

func (c *countingRecorder) ObserveProbe(Labels, service.ProbeType, string, Outcome, time.Duration) {
	c.probes.Add(1)
}
func (c *countingRecorder) ObserveLateness(time.Duration) { c.lateness.Add(1) }

// TestTenThousandProbesNoGoroutineGrowth registers 10,000 probes and checks that the
// number of goroutines does not grow with them.
func TestTenThousandProbesNoGoroutineGrowth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &countingRecorder{}
		m := startManager(t, Options{Workers: 16, Recorder: rec})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		settle(50 * time.Millisecond)
		before := runtime.NumGoroutine()
		start := time.Now()
		const n = 10_000
		for i := range n {
			m.Register(Instance{ID: fmt.Sprint(i), Instance: "1", Target: tg, StartedAt: start,
				Checks: [3]*service.Check{service.Readiness: execCheck(service.Readiness, "r", time.Second, 0)}})
		}
		waitFor(t, "every probe run once", func() bool { return rec.probes.Load() >= n })
		after := runtime.NumGoroutine()
		if after > before+4 {
			t.Fatalf("goroutines grew from %d to %d with %d probes", before, after, n)
		}
		// A probe is recorded before it is re-armed: wait for the last re-arms.
		waitFor(t, "every probe scheduled again", func() bool { return m.Scheduled() == n })
		t.Logf("%d probes, goroutines %d before and %d after", n, before, after)
	})
}

func TestRestoredStateKeepsStartedAndReady(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{})
		tg := newScript(func(name string, n int) (int, error) { return 0, nil })
		m.Register(Instance{ID: "c", Instance: "1", Target: tg, StartedAt: time.Now().Add(-time.Hour), Adopted: true,
			Restore: &Restore{Started: true, Readiness: ValueSuccess},
			Checks: [3]*service.Check{
				service.Startup:   execCheck(service.Startup, "startup", 100*time.Millisecond, 0),
				service.Readiness: execCheck(service.Readiness, "ready", 200*time.Millisecond, 0),
			}})
		st, _ := m.Status("c")
		if !st.Started || st.Values[service.Readiness] != ValueSuccess {
			t.Fatalf("restored status %+v", st)
		}
		if sum, _ := m.Summary("c"); sum.Started != st.Started || sum.Values != st.Values || sum.Has != st.Has ||
			sum.Probes != [3]*ProbeDetail{} {
			t.Fatalf("summary %+v differs from status %+v or carries detail", sum, st)
		}
		waitFor(t, "readiness probed", func() bool { return len(tg.times("ready")) > 0 })
		settle(100 * time.Millisecond)
		if len(tg.times("startup")) != 0 {
			t.Fatal("startup probed again after a restore")
		}
		if trs := drainAll(m); len(trs) != 0 {
			t.Fatalf("transitions after restore: %+v", trs)
		}
	})
}

// TestExecConcurrencyCapped checks that no more exec probes run at once than allowed,
// however many are due together.
func TestExecConcurrencyCapped(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{Workers: 16, MaxConcurrentExec: 2})
		var running, peak atomic.Int32
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		tg.hold = 50 * time.Millisecond
		counting := &countingTarget{scriptTarget: tg, running: &running, peak: &peak}
		for i := range 10 {
			c := execCheck(service.Readiness, fmt.Sprint("e", i), time.Second, 0)
			c.TimeoutSeconds = service.Seconds(5 * time.Second)
			m.Register(Instance{ID: fmt.Sprint(i), Instance: "1", Target: counting, StartedAt: time.Now(),
				Checks: [3]*service.Check{service.Readiness: c}})
		}
		waitFor(t, "every exec run", func() bool {
			n := 0
			for i := range 10 {
				n += len(tg.times(fmt.Sprint("e", i)))
			}
			return n >= 10
		})
		if p := peak.Load(); p != 2 {
			t.Fatalf("peak concurrent execs %d, want the cap of 2", p)
		}
	})
}

// TestNetworkProbesNeverWaitForExecs checks the two lanes: a backlog of slow exec
// probes, far more than may run at once, does not delay a TCP probe by a tick.
func TestNetworkProbesNeverWaitForExecs(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := startManager(t, Options{Workers: 4, MaxConcurrentExec: 2})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		tg.hold = time.Second
		start := time.Now()
		for i := range 100 {
			c := execCheck(service.Readiness, fmt.Sprint("e", i), time.Hour, 0)
			c.TimeoutSeconds = service.Seconds(5 * time.Second)
			m.Register(Instance{ID: fmt.Sprint(i), Instance: "1", Target: tg, StartedAt: start,
				Checks: [3]*service.Check{service.Readiness: c}})
		}
		tcp := service.DefaultCheck(service.Readiness)
		tcp.TCPSocket = &service.TCPSocket{Port: 8000}
		tcp.InitialDelaySeconds = service.Seconds(10 * time.Millisecond)
		m.Register(Instance{ID: "net", Instance: "1", Target: tg, StartedAt: start,
			Checks: [3]*service.Check{service.Readiness: tcp}})
		settle(50 * time.Millisecond)
		dials := tg.times("dial 127.0.0.1:8000")
		if len(dials) == 0 {
			t.Fatal("the TCP probe has not run 50ms after its due time, behind 100 exec probes")
		}
		if late := dials[0].Sub(start) - 10*time.Millisecond; late < 0 || late > time.Millisecond {
			t.Fatalf("the TCP probe started %v after its due time", late)
		}
	})
}

type latenessRecorder struct {
	mu   sync.Mutex
	seen []time.Duration
}

func (*latenessRecorder) ObserveProbe(Labels, service.ProbeType, string, Outcome, time.Duration) {}
func (r *latenessRecorder) ObserveLateness(d time.Duration) {
	r.mu.Lock()
	r.seen = append(r.seen, d)
	r.mu.Unlock()
}

// TestLatenessIsDueToStart checks what the scheduler's lateness measures: from a
// probe's due time until it starts running, so time spent queued behind busy workers
// counts.
func TestLatenessIsDueToStart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rec := &latenessRecorder{}
		m := startManager(t, Options{MaxConcurrentExec: 1, Recorder: rec})
		tg := newScript(func(string, int) (int, error) { return 0, nil })
		tg.hold = time.Second
		for i := range 2 {
			c := execCheck(service.Readiness, fmt.Sprint("e", i), time.Hour, 0)
			c.TimeoutSeconds = service.Seconds(5 * time.Second)
			m.Register(Instance{ID: fmt.Sprint(i), Instance: "1", Target: tg, StartedAt: time.Now(),
				Checks: [3]*service.Check{service.Readiness: c}})
		}
		settle(3 * time.Second)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.seen) != 2 || min(rec.seen[0], rec.seen[1]) != 0 || max(rec.seen[0], rec.seen[1]) != time.Second {
			t.Fatalf("lateness %v, want 0 for the first exec and 1s for the one queued behind it", rec.seen)
		}
	})
}

type countingTarget struct {
	*scriptTarget
	running, peak *atomic.Int32
}

func (c *countingTarget) Exec(ctx context.Context, argv []string, out io.Writer) (int, error) {
	n := c.running.Add(1)
	defer c.running.Add(-1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return c.scriptTarget.Exec(ctx, argv, out)
}
