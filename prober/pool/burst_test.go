//go:build !race

package pool

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
)

// The race detector slows every step tenfold, which legitimately wakes more workers;
// this test measures the real design, so it runs without it (make test runs it).

// TestCheapBurstWakesFewWorkers checks the point of the pool: a burst of cheap items
// is drained without waking every worker.
func TestCheapBurstWakesFewWorkers(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	p := New(64, func(context.Context, int) { wg.Done() })
	run(t, p)
	await.Until(t, 5*time.Second, "every worker parked", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.idle == 64
	})
	p.mu.Lock()
	before := p.wakeups
	p.mu.Unlock()
	wg.Add(1000)
	for i := range 1000 {
		p.Push(i)
	}
	wg.Wait()
	p.mu.Lock()
	woken := p.wakeups - before
	p.mu.Unlock()
	if woken >= 8 {
		t.Fatalf("%d wake-ups for a burst of 1000 cheap items with 64 workers", woken)
	}
	t.Logf("%d wake-ups for 1000 items", woken)
}
