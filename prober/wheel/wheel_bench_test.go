package wheel

import (
	"math/rand/v2"
	"testing"
)

const pending = 100_000

// loaded returns a wheel with 100k timers spread over ten seconds of 1 ms ticks.
func loaded(b *testing.B) (*Wheel, []Timer) {
	b.Helper()
	w := New(0)
	ts := make([]Timer, pending)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range ts {
		w.Add(&ts[i], 1+r.Int64N(10_000))
	}
	return w, ts
}

// BenchmarkInsertCancel moves one timer in and out of a wheel holding 100k others.
func BenchmarkInsertCancel(b *testing.B) {
	w, _ := loaded(b)
	var t Timer
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		w.Add(&t, int64(1+i%10_000))
		w.Cancel(&t)
	}
}

// BenchmarkReArm moves pending timers to new expiries, as a probe's next period does.
func BenchmarkReArm(b *testing.B) {
	w, ts := loaded(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		w.Add(&ts[i%pending], int64(1+(i*7919)%10_000))
	}
}

// inRounds runs b.N operations in rounds of at most 100k timers: each round starts from
// an empty wheel, setup fills it untimed, and timed does the n measured operations.
func inRounds(b *testing.B, setup, timed func(w *Wheel, ts []Timer)) {
	ts := make([]Timer, pending)
	w := New(0)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		*w = Wheel{}
		n := min(pending, b.N-done)
		clear(ts)
		setup(w, ts[:n])
		b.StartTimer()
		timed(w, ts[:n])
		done += n
	}
}

func spread(w *Wheel, ts []Timer) {
	for i := range ts {
		w.Add(&ts[i], int64(1+(i*7919)%10_000))
	}
}

// BenchmarkInsert adds timers to an empty wheel, up to 100k.
func BenchmarkInsert(b *testing.B) {
	inRounds(b, func(*Wheel, []Timer) {}, spread)
}

// BenchmarkCancel removes timers from a wheel holding up to 100k.
func BenchmarkCancel(b *testing.B) {
	inRounds(b, spread, func(w *Wheel, ts []Timer) {
		for i := range ts {
			w.Cancel(&ts[i])
		}
	})
}

// BenchmarkExpireOnly fires timers, cascades included: up to 100k timers spread over
// ten seconds of 1 ms ticks, with nothing re-armed.
func BenchmarkExpireOnly(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 6))
	fired := 0
	fire := func(*Timer) { fired++ }
	inRounds(b, func(w *Wheel, ts []Timer) {
		for i := range ts {
			w.Add(&ts[i], 1+r.Int64N(10_000))
		}
	}, func(w *Wheel, _ []Timer) { w.Advance(10_001, fire) })
	if fired != b.N {
		b.Fatalf("fired %d of %d", fired, b.N)
	}
}

// BenchmarkExpire measures the cost per fired timer, cascades included, with each
// fired timer re-armed one period (10 s) later so the wheel stays at 100k.
func BenchmarkExpire(b *testing.B) {
	w, _ := loaded(b)
	fired := 0
	fire := func(t *Timer) {
		fired++
		w.Add(t, w.Now()+10_000)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for fired < b.N {
		at, _ := w.NextExpiry()
		w.Advance(at, fire)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(fired), "ns/fire")
}
