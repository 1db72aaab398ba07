// Package pool is a bounded pool of workers fed through an unbounded FIFO queue. It
// wakes workers on demand: an item that no awake worker will come back for wakes one
// idle worker, unless one is already waking; and a worker that takes an item while
// more wait wakes the next. So a burst of cheap items is drained by the few workers
// that are awake instead of waking every worker (wake-ups dominate the cost of
// scheduling many small probes), while an item pushed when every awake worker is busy
// with a slow one starts at once on an idle worker instead of waiting behind it.
package pool

import (
	"context"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Pool runs fn on queued items with at most Workers goroutines.
type Pool[T any] struct {
	fn      func(context.Context, T)
	workers int

	mu      sync.Mutex
	cond    *sync.Cond
	items   []T
	head    int
	idle    int // parked in cond.Wait
	busy    int // running fn
	waking  int // signalled, not yet running
	wakeups int // times a worker left the idle state, for tests
	closed  bool
}

// New returns a pool of workers goroutines (at least 1) running fn.
func New[T any](workers int, fn func(context.Context, T)) *Pool[T] {
	p := &Pool[T]{fn: fn, workers: max(workers, 1)}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// Push queues an item; it never blocks. When every worker is either parked or busy
// running an item, none will come back for this one soon: an idle worker is woken (one
// at a time; the woken worker brings in more if items pile up).
func (p *Pool[T]) Push(v T) {
	p.mu.Lock()
	p.items = append(p.items, v)
	if p.idle+p.busy == p.workers {
		p.wakeOne()
	}
	p.mu.Unlock()
}

// wakeOne signals an idle worker unless one is already on its way; called with p.mu.
func (p *Pool[T]) wakeOne() {
	if p.idle > p.waking && p.waking == 0 {
		p.waking++
		p.cond.Signal()
	}
}

// Len returns the number of queued items.
func (p *Pool[T]) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.items) - p.head
}

// Run starts the workers and returns once ctx has ended and they have stopped; items
// still queued then are dropped.
func (p *Pool[T]) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for range p.workers {
		g.Go(func() error {
			p.work(ctx)
			return nil
		})
	}
	<-ctx.Done()
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	return g.Wait()
}

func (p *Pool[T]) work(ctx context.Context) {
	p.mu.Lock()
	for {
		for p.head == len(p.items) && !p.closed {
			p.idle++
			p.cond.Wait()
			p.idle--
			p.wakeups++
			if p.waking > 0 {
				p.waking--
			}
		}
		if p.closed {
			p.mu.Unlock()
			return
		}
		var zero T
		v := p.items[p.head]
		p.items[p.head] = zero
		p.head++
		if p.head == len(p.items) {
			p.items, p.head = p.items[:0], 0
		} else {
			p.wakeOne() // more waiting: bring another worker in
		}
		p.busy++
		p.mu.Unlock()
		p.fn(ctx, v)
		p.mu.Lock()
		p.busy--
	}
}
