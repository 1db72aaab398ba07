// Package pool is a bounded pool of workers fed through an unbounded FIFO queue. It
// wakes workers on demand: a push wakes one idle worker only when none is already
// waking, and a worker that takes an item while more wait wakes the next. A burst of
// cheap items is drained by the few workers that are awake instead of waking every
// worker, which is what dominates the cost of scheduling many small probes.
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
	idle    int
	waking  int
	wakeups int // times a worker left the idle state, for tests
	closed  bool
}

// New returns a pool of workers goroutines (at least 1) running fn.
func New[T any](workers int, fn func(context.Context, T)) *Pool[T] {
	p := &Pool[T]{fn: fn, workers: max(workers, 1)}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// Push queues an item; it never blocks. A worker is woken only when none is awake:
// an awake worker comes back for the item, and wakes others if work piles up.
func (p *Pool[T]) Push(v T) {
	p.mu.Lock()
	p.items = append(p.items, v)
	if p.idle == p.workers {
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
	for {
		p.mu.Lock()
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
		p.mu.Unlock()
		p.fn(ctx, v)
	}
}
