package gpu

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/probe-agent/probe-agent/internal/await"
)

// fakeSource is a Source whose samples and events the test sets.
type fakeSource struct {
	mu      sync.Mutex
	devs    []Device
	samples []Sample
	err     error
	events  chan Event
	polls   int
}

func (f *fakeSource) Devices() []Device     { return f.devs }
func (f *fakeSource) DriverVersion() string { return "550.54.15" }
func (f *fakeSource) Sample(context.Context) ([]Sample, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	return append([]Sample(nil), f.samples...), f.err
}
func (f *fakeSource) Events() <-chan Event { return f.events }
func (f *fakeSource) Close() error         { return nil }

func (f *fakeSource) set(fn func(*fakeSource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func TestMonitorFollowsEventsAndRecovery(t *testing.T) {
	devs := node()[:2]
	src := &fakeSource{devs: devs, events: make(chan Event, 4)}
	for _, d := range devs {
		src.samples = append(src.samples, Sample{UUID: d.UUID, ECCCorrVolatile: Some[uint64](5), RecoveryAction: Some[uint32](0)})
	}
	core, logs := observer.New(zap.DebugLevel)
	// Polls every 20 ms: a reset or a failing poll shows at the next tick; events that
	// cannot change a verdict (XID 13, single-bit ECC) do not poll by themselves.
	m := NewMonitor(src, DefaultPolicy(), 20*time.Millisecond, zap.New(core))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	wait := func(what string, cond func(Snapshot) bool) Snapshot {
		t.Helper()
		var s Snapshot
		await.Until(t, 5*time.Second, what, func() bool { s = m.Snapshot(); return cond(s) },
			func() string { return fmt.Sprintf("%+v", s) })
		return s
	}
	wait("healthy", func(s Snapshot) bool {
		return s.Up && s.GPUs[0].Verdict.State == Healthy && s.GPUs[1].Verdict.State == Healthy
	})
	src.events <- Event{UUID: devs[1].UUID, Kind: EventXID, XID: 79, GI: NoInstance, CI: NoInstance}
	s := wait("GPU 1 unhealthy", func(s Snapshot) bool { return s.GPUs[1].Verdict.State == Unhealthy })
	if s.GPUs[0].Verdict.State != Healthy || s.GPUs[1].Verdict.XID() != 79 || s.GPUs[1].XIDs[79] != 1 {
		t.Fatalf("snapshot %+v", s)
	}
	select {
	case <-m.Notify():
	case <-time.After(time.Second):
		t.Fatal("no notification of the change")
	}
	if logs.FilterMessage("gpu event").FilterField(zap.String("xid_name", "GPU_HAS_FALLEN_OFF_THE_BUS")).Len() != 1 ||
		logs.FilterMessage("gpu health changed").FilterField(zap.String("to", "unhealthy")).FilterField(zap.Uint64("xid", 79)).
			FilterField(zap.String("xid_name", "GPU_HAS_FALLEN_OFF_THE_BUS")).FilterField(zap.Int("gpu_index", 1)).Len() != 1 {
		t.Fatalf("logs: %v", logs.All())
	}
	// A reset (volatile counters back to zero) brings it back.
	src.set(func(f *fakeSource) { f.samples[1].ECCCorrVolatile = Some[uint64](0) })
	src.events <- Event{UUID: devs[1].UUID, Kind: EventXID, XID: 13, GI: NoInstance, CI: NoInstance}
	wait("GPU 1 healthy again", func(s Snapshot) bool { return s.GPUs[1].Verdict.State == Healthy })

	// A failing poll is Unknown, not unhealthy.
	src.set(func(f *fakeSource) { f.err = errors.New("poll timed out") })
	src.events <- Event{UUID: devs[0].UUID, Kind: EventSBE, GI: NoInstance, CI: NoInstance}
	wait("unknown", func(s Snapshot) bool { return !s.Up && s.GPUs[0].Verdict.State == Unknown })
}

// Events that cannot change a verdict (single-bit ECC, ignored XIDs) are recorded and
// logged without polling the GPUs; a fatal XID is acted on at once.
func TestMonitorPollsOnlyForEventsThatMatter(t *testing.T) {
	devs := node()[:2]
	src := &fakeSource{devs: devs, events: make(chan Event)}
	for _, d := range devs {
		src.samples = append(src.samples, Sample{UUID: d.UUID, ECCCorrVolatile: Some[uint64](5)})
	}
	core, logs := observer.New(zap.DebugLevel)
	m := NewMonitor(src, DefaultPolicy(), time.Hour, zap.New(core))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	polls := func() int {
		src.mu.Lock()
		defer src.mu.Unlock()
		return src.polls
	}
	// One at a time (the channel is unbuffered), so that none is batched with another.
	for i := range 200 {
		e := Event{UUID: devs[0].UUID, Kind: EventSBE, GI: NoInstance, CI: NoInstance}
		if i%2 == 1 {
			e.Kind, e.XID = EventXID, 13
		}
		src.events <- e
	}
	src.events <- Event{UUID: devs[1].UUID, Kind: EventXID, XID: 79, GI: NoInstance, CI: NoInstance}
	await.Until(t, 5*time.Second, "XID 79 acted on", func() bool { return m.Snapshot().GPUs[1].Verdict.State == Unhealthy })
	if n := polls(); n != 2 {
		t.Fatalf("%d polls, want the first and one for XID 79", n)
	}
	if n := logs.FilterMessage("gpu event").Len(); n != 201 {
		t.Fatalf("%d event lines, want one per event", n)
	}
	if s := m.Snapshot(); s.GPUs[0].Verdict.State != Healthy || s.GPUs[0].XIDs[13] != 100 {
		t.Fatalf("GPU 0: %+v", s.GPUs[0])
	}
}
