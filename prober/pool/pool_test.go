package pool

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
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
