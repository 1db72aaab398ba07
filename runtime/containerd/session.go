package containerd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/containerd"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/runtime"
)

// Run connects, lists every container, follows events and reconnects with back-off when
// containerd goes away, listing again to catch up. Containers keep running when it
// returns: an agent restart must not disturb them.
func (r *Runtime) Run(ctx context.Context, events chan<- runtime.Event) error {
	r.mu.Lock()
	r.events = events
	r.mu.Unlock()
	defer func() {
		// Ending runners and deleting execs are calls to containerd (each bounded by a
		// timeout): they finish before the client closes.
		r.endRunners("")
		r.cleanup.Wait()
		r.mu.Lock()
		if r.client != nil {
			r.client.Close()
		}
		r.mu.Unlock()
	}()
	delay := 100 * time.Millisecond
	adopting := true
	for ctx.Err() == nil {
		synced, err := r.session(ctx, adopting)
		if synced {
			adopting, delay = false, 100*time.Millisecond
		}
		if ctx.Err() != nil {
			break
		}
		r.connected.Store(false)
		r.log.Warn("containerd unreachable; keeping the last known state and retrying",
			zap.String("address", r.opts.Address), zap.Duration("retry_in", delay), zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	r.connected.Store(false)
	return nil
}

func (r *Runtime) getClient() (*containerd.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client != nil {
		return r.client, nil
	}
	c, err := containerd.New(r.opts.Address, containerd.WithTimeout(2*time.Second))
	if err != nil {
		return nil, err
	}
	r.client = c
	return c, nil
}

// session subscribes, reconciles and follows events until the stream breaks. synced
// says whether the full listing succeeded.
func (r *Runtime) session(ctx context.Context, adopting bool) (synced bool, err error) {
	client, err := r.getClient()
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	serving, err := client.IsServing(sctx)
	cancel()
	if err != nil || !serving {
		return false, fmt.Errorf("containerd not serving: %w", err)
	}
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	// Subscribe before listing, so that nothing that happens in between is missed.
	evc, errc := client.Subscribe(subCtx,
		`topic~="^/tasks/(start|exit|oom)$"`, `topic~="^/containers/(create|update|delete)$"`)
	r.startOwned(ctx, client)
	if err := r.reconcile(ctx, client, adopting); err != nil {
		return false, err
	}
	r.connected.Store(true)
	r.log.Info("containerd connected", zap.String("address", r.opts.Address))
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-errc:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return true, err
		case e := <-evc:
			r.handle(ctx, client, e)
		}
	}
}

func (r *Runtime) watched(ns string) bool {
	return len(r.opts.Namespaces) == 0 || slices.Contains(r.opts.Namespaces, ns)
}

// send delivers events to the agent. It is called without r.mu held, since the agent
// may call back into the runtime while the channel is full. Two kinds of goroutine
// call it: Run's, with everything learnt from containerd (in the order learnt), and
// the agent's restart goroutines through Start, with the StartFailed of a start they
// asked for. A StartFailed may come between two of Run's events, which is harmless:
// the agent applies it to the container it names, whose next Started supersedes it.
func (r *Runtime) send(evs []runtime.Event) {
	for _, ev := range evs {
		if ev.Type == runtime.Exited && ev.Instance != "" {
			r.endRunners(ev.Instance)
		}
		r.events <- ev
	}
}
