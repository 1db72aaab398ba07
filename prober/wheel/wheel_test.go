package wheel

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jonboulle/clockwork"
)

func collect(w *Wheel, now int64) []*Timer {
	var got []*Timer
	w.Advance(now, func(t *Timer) { got = append(got, t) })
	return got
}

func TestAddAdvanceFiresAtExactTick(t *testing.T) {
	t.Parallel()
	w := New(1000)
	a, b, c := &Timer{Value: "a"}, &Timer{Value: "b"}, &Timer{Value: "c"}
	w.Add(a, 1005)
	w.Add(b, 1000+70)        // level 1
	w.Add(c, 1000+3_600_000) // an hour ahead
	if w.Len() != 3 {
		t.Fatalf("len %d", w.Len())
	}
	if got := collect(w, 1004); len(got) != 0 {
		t.Fatalf("fired early: %v", got)
	}
	if got := collect(w, 1005); len(got) != 1 || got[0] != a {
		t.Fatalf("at 1005: %v", got)
	}
	if got := collect(w, 1069); len(got) != 0 {
		t.Fatalf("b fired early")
	}
	if got := collect(w, 1070); len(got) != 1 || got[0] != b {
		t.Fatalf("at 1070: %v", got)
	}
	if got := collect(w, 1000+3_599_999); len(got) != 0 {
		t.Fatalf("c fired early")
	}
	if got := collect(w, 1000+3_600_000); len(got) != 1 || got[0] != c {
		t.Fatalf("c: %v", got)
	}
	if w.Len() != 0 || a.Active() {
		t.Fatalf("len %d after all fired", w.Len())
	}
}

func TestCancelAndReAdd(t *testing.T) {
	t.Parallel()
	w := New(0)
	a := &Timer{}
	w.Add(a, 100)
	if !w.Cancel(a) || w.Cancel(a) {
		t.Fatal("cancel should succeed once")
	}
	if got := collect(w, 200); len(got) != 0 || w.Len() != 0 {
		t.Fatal("cancelled timer fired")
	}
	w.Add(a, 300)
	w.Add(a, 250) // move while pending
	if w.Len() != 1 {
		t.Fatalf("re-add counted twice: %d", w.Len())
	}
	if got := collect(w, 250); len(got) != 1 {
		t.Fatal("moved timer did not fire at its new time")
	}
}

func TestNextExpiry(t *testing.T) {
	t.Parallel()
	w := New(0)
	if _, ok := w.NextExpiry(); ok {
		t.Fatal("empty wheel has an expiry")
	}
	w.Add(&Timer{}, 10)
	if at, ok := w.NextExpiry(); !ok || at != 10 {
		t.Fatalf("level-0 expiry %d %v", at, ok)
	}
	w2 := New(0)
	w2.Add(&Timer{}, 5000)
	at, ok := w2.NextExpiry()
	if !ok || at > 5000 || at <= 0 {
		t.Fatalf("cascade point %d should lie in (0, 5000]", at)
	}
	// Following NextExpiry steps reaches the timer at exactly its tick.
	steps := 0
	for {
		at, ok := w2.NextExpiry()
		if !ok {
			t.Fatal("lost the timer")
		}
		if got := collect(w2, at); len(got) == 1 {
			if at != 5000 {
				t.Fatalf("fired at %d", at)
			}
			break
		}
		steps++
	}
	if steps > levels {
		t.Fatalf("%d wake-ups for one timer, more than one per level", steps)
	}
	// An overdue timer is due at once.
	w3 := New(100)
	w3.Add(&Timer{}, 50)
	if at, _ := w3.NextExpiry(); at != 100 {
		t.Fatalf("overdue timer expiry %d, want 100", at)
	}
}

func TestNextFireSkipsCascadesOfSparseSlots(t *testing.T) {
	t.Parallel()
	w := New(0)
	for i := range 10 {
		w.Add(&Timer{}, 5_000+int64(i)*3) // one level-1 slot, ten timers
	}
	if at, _ := w.NextExpiry(); at >= 5_000 {
		t.Fatalf("NextExpiry %d: expected a cascade point before 5000", at)
	}
	if at, ok := w.NextFire(); !ok || at != 5_000 {
		t.Fatalf("NextFire %d, want the earliest expiry 5000", at)
	}
}

func TestFarFutureIsClamped(t *testing.T) {
	t.Parallel()
	w := New(0)
	a := &Timer{}
	w.Add(a, 1<<62)
	if at, ok := w.NextExpiry(); !ok || at > MaxTicks {
		t.Fatalf("expiry %d", at)
	}
}

func TestFireMayCancelOthersInSameSlot(t *testing.T) {
	t.Parallel()
	w := New(0)
	a, b := &Timer{}, &Timer{}
	w.Add(a, 5)
	w.Add(b, 5)
	fired := 0
	w.Advance(5, func(t *Timer) {
		fired++
		w.Cancel(a)
		w.Cancel(b)
	})
	if fired != 1 || w.Len() != 0 {
		t.Fatalf("fired %d, len %d", fired, w.Len())
	}
}

// TestAgainstModel runs random operations and checks every timer fires at the first
// Advance at or after its expiry, never before, and exactly once.
func TestAgainstModel(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	w := New(0)
	timers := make([]*Timer, 500)
	due := map[*Timer]int64{}
	for i := range timers {
		timers[i] = &Timer{}
	}
	now := int64(0)
	for step := 0; step < 20000; step++ {
		tm := timers[r.IntN(len(timers))]
		switch op := r.IntN(10); {
		case op < 5:
			var when int64
			switch r.IntN(3) {
			case 0:
				when = now + r.Int64N(64)
			case 1:
				when = now + r.Int64N(10_000)
			default:
				when = now + r.Int64N(50_000_000)
			}
			w.Add(tm, when)
			due[tm] = when
		case op < 7:
			_, pending := due[tm]
			if w.Cancel(tm) != pending {
				t.Fatalf("cancel disagreed with the model")
			}
			delete(due, tm)
		default:
			now += r.Int64N(5000)
			if r.IntN(20) == 0 {
				now += r.Int64N(100_000_000)
			}
			w.Advance(now, func(tm *Timer) {
				when, ok := due[tm]
				if !ok {
					t.Fatalf("fired a timer that is not pending")
				}
				if when > w.Now() {
					t.Fatalf("fired early: due %d at %d", when, w.Now())
				}
				delete(due, tm)
			})
			for _, when := range due {
				if when <= now {
					t.Fatalf("timer due %d not fired by %d", when, now)
				}
			}
		}
		if w.Len() != len(due) {
			t.Fatalf("len %d, model %d", w.Len(), len(due))
		}
		earliest := int64(-1)
		for _, when := range due {
			if earliest < 0 || when < earliest {
				earliest = when
			}
		}
		// NextFire is never past the earliest expiry, and it is that expiry unless a
		// dense slot is cheaper to cascade than to scan.
		if got, ok := w.NextFire(); ok != (earliest >= 0) || (ok && (got > max(min(earliest, w.Now()+MaxTicks), w.Now()) || got < w.Now())) {
			t.Fatalf("NextFire %d %v, model %d (now %d)", got, ok, earliest, w.Now())
		}
	}
}

// TestDriverFakeClock checks the driver fires at the due time and not before, and that
// an earlier timer added while it sleeps wakes it.
func TestDriverFakeClock(t *testing.T) {
	t.Parallel()
	fc := clockwork.NewFakeClock()
	fired := make(chan time.Time, 10)
	d := NewDriver(fc, time.Millisecond, func(tm *Timer, due time.Time) { fired <- due })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	start := fc.Now()
	late := &Timer{}
	d.Add(late, start.Add(10*time.Second))
	if err := fc.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	early := &Timer{}
	d.Add(early, start.Add(100*time.Millisecond))
	fc.BlockUntilContext(ctx, 1)
	fc.Advance(99 * time.Millisecond)
	select {
	case <-fired:
		t.Fatal("fired before its time")
	case <-time.After(20 * time.Millisecond):
	}
	fc.Advance(time.Millisecond)
	select {
	case due := <-fired:
		if !due.Equal(start.Add(100 * time.Millisecond)) {
			t.Fatalf("due %v", due.Sub(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("did not fire at its time")
	}
	if d.Len() != 1 {
		t.Fatalf("len %d", d.Len())
	}
	if !d.Cancel(late) {
		t.Fatal("cancel")
	}
}

// TestDriverRealClockNeverEarly checks the error bound against the real clock: never
// early, and late by about one tick plus wake-up latency (bounded loosely for CI).
func TestDriverRealClockNeverEarly(t *testing.T) {
	t.Parallel()
	type fire struct{ due, at time.Time }
	fired := make(chan fire, 64)
	d := NewDriver(clockwork.NewRealClock(), time.Millisecond, func(tm *Timer, due time.Time) {
		fired <- fire{due, time.Now()}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	base := time.Now()
	const n = 20
	want := map[time.Duration]bool{}
	for i := range n {
		off := time.Duration(5+i*7) * time.Millisecond
		want[off] = true
		d.Add(&Timer{}, base.Add(off))
	}
	for range n {
		select {
		case f := <-fired:
			if f.at.Before(f.due) {
				t.Fatalf("fired %v early", f.due.Sub(f.at))
			}
			if late := f.at.Sub(f.due); late > 200*time.Millisecond {
				t.Errorf("fired %v late", late)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("timer lost")
		}
	}
}

// TestDriverSlackBatchesWakeups checks that timers added with a slack fire within it,
// never early, on shared ticks. It runs in a synctest bubble, where the real clock is
// the bubble's fake one.
func TestDriverSlackBatchesWakeups(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		type fire struct{ due, at time.Time }
		fired := make(chan fire, 100)
		d := NewDriver(clockwork.NewRealClock(), time.Millisecond, func(tm *Timer, due time.Time) { fired <- fire{due, time.Now()} })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { d.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		start := time.Now()
		asked := map[*Timer]time.Time{}
		for i := range 20 {
			tm := &Timer{}
			at := start.Add(time.Duration(1000+i*37) * time.Millisecond)
			asked[tm] = at
			d.AddSlack(tm, at, 100*time.Millisecond)
		}
		dues := map[time.Time]bool{}
		wakeups := map[time.Time]bool{}
		for n := 0; n < 20; {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%d of 20 fired after 5s", n)
			}
			time.Sleep(50 * time.Millisecond)
			synctest.Wait()
			for drained := false; !drained; {
				select {
				case f := <-fired:
					n++
					dues[f.due] = true
					wakeups[f.at] = true
					if f.at.Before(f.due) {
						t.Fatal("fired early")
					}
				default:
					drained = true
				}
			}
		}
		for tm, at := range asked {
			if due := d.Due(tm); due.Before(at) || due.Sub(at) >= 100*time.Millisecond {
				t.Fatalf("due %v for %v: outside [at, at+slack)", due.Sub(start), at.Sub(start))
			}
		}
		if len(dues) > 9 || len(wakeups) > 9 { // 0.7 s of due times on a 100 ms grid: at most 9 wake-ups
			t.Fatalf("%d distinct due times, %d wake-ups for 20 timers over 0.7 s with 100 ms slack", len(dues), len(wakeups))
		}
	})
}
