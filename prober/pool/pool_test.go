package pool

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func run[T any](t *testing.T, p *Pool[T]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestRunsEverythingInOrderPerWorker(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[int]bool{}
	var wg sync.WaitGroup
	p := New(4, func(_ context.Context, v int) {
		mu.Lock()
		seen[v] = true
		mu.Unlock()
		wg.Done()
	})
	run(t, p)
	wg.Add(10_000)
	for i := range 10_000 {
		p.Push(i)
	}
	wg.Wait()
	if len(seen) != 10_000 || p.Len() != 0 {
		t.Fatalf("ran %d of 10000, %d queued", len(seen), p.Len())
	}
}

func TestBoundedConcurrency(t *testing.T) {
	t.Parallel()
	var running, peak atomic.Int32
	var wg sync.WaitGroup
	p := New(3, func(_ context.Context, _ int) {
		n := running.Add(1)
		for {
			pk := peak.Load()
			if n <= pk || peak.CompareAndSwap(pk, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		running.Add(-1)
		wg.Done()
	})
	run(t, p)
	wg.Add(30)
	for i := range 30 {
		p.Push(i)
	}
	wg.Wait()
	if peak.Load() != 3 {
		t.Fatalf("peak %d, want all 3 workers used and no more", peak.Load())
	}
}

// TestItemStartsWhileAnotherWorkerIsBusy is the regression test for a slow item
// holding back the queue: with one worker busy on a slow item and the others parked,
// a new item must start at once on a parked worker, not when the slow one is done.
// In the synctest bubble "at once" is exact: once every goroutine is blocked again,
// the new item has run.
func TestItemStartsWhileAnotherWorkerIsBusy(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var ran atomic.Int32
		p := New(4, func(_ context.Context, v int) {
			if v == 0 {
				<-release // the slow probe
			}
			ran.Add(1)
		})
		run(t, p)
		t.Cleanup(func() { close(release) })
		p.Push(0)
		synctest.Wait()
		p.Push(1)
		synctest.Wait()
		if ran.Load() != 1 {
			t.Fatal("an item pushed while one worker was busy waited for it instead of starting on an idle worker")
		}
		// And the burst behaviour holds: items pushed together while a worker is busy
		// all run.
		for i := range 100 {
			p.Push(2 + i)
		}
		synctest.Wait()
		if ran.Load() != 101 {
			t.Fatalf("%d of 101 quick items ran", ran.Load())
		}
	})
}
