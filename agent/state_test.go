package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// addingRuntime reports n containers without checks, then waits.
type addingRuntime struct{ n int }

func (r addingRuntime) Run(ctx context.Context, events chan<- runtime.Event) error {
	for i := range r.n {
		name := fmt.Sprint("c", i)
		events <- runtime.Event{Type: runtime.Added, Name: name, Time: time.Now(),
			Container: &runtime.Container{Identity: runtime.Identity{Name: name, Container: name}, Spec: &service.Container{Name: name}, Owned: true}}
	}
	<-ctx.Done()
	return nil
}
func (addingRuntime) Start(context.Context, string) error               { return nil }
func (addingRuntime) Stop(context.Context, string, time.Duration) error { return nil }
func (addingRuntime) Target(string) (runtime.Target, error)             { return nil, fmt.Errorf("no target") }
func (addingRuntime) Connected() bool                                   { return true }

// TestStateWritesAreCoalesced: a burst of events marks the state dirty; it is written
// a few times, not once per event, and completely on shutdown.
func TestStateWritesAreCoalesced(t *testing.T) {
	t.Parallel()
	const n = 1000
	dir := t.TempDir()
	h := runAgent(t, Options{Runtime: addingRuntime{n}, StateDir: dir}, nil)
	await.Until(t, 30*time.Second, "every container known", func() bool { return len(h.a.Containers()) == n })
	h.stop()
	if w := h.a.saves.Load(); w < 1 || w > 20 {
		t.Fatalf("%d state writes for %d events; want them coalesced", w, n)
	}
	s, problems, err := loadState(dir)
	if err != nil || len(problems) > 0 || len(s.Containers) != n {
		t.Fatalf("saved %d containers (%v, %v), want %d", len(s.Containers), problems, err, n)
	}
}

// TestSavedStateSurvivesABadValue: a field of the wrong type costs that field, a
// container that is not an object costs that container, never the whole file.
func TestSavedStateSurvivesABadValue(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	doc := `{"version":1,"containers":{
		"a":{"instance":"x","restart_count":"three","ready":true,"backoff_delay":1000},
		"b":{"instance":"y","restart_count":2,"started":true},
		"c":5}}`
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	s, problems, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := s.Containers["a"], s.Containers["b"]
	if a.Instance != "x" || !a.Ready || a.RestartCount != 0 || a.BackoffDelay != 1000 {
		t.Errorf("a: %+v; want everything but its restart count", a)
	}
	if b.Instance != "y" || b.RestartCount != 2 || !b.Started {
		t.Errorf("b: %+v", b)
	}
	if _, ok := s.Containers["c"]; ok || len(problems) != 2 ||
		!strings.HasPrefix(problems[0]+problems[1], "containers[") {
		t.Errorf("containers %v, problems %q", s.Containers, problems)
	}
}

// TestStateSaveRetriedUntilItWorks: a state dir that cannot be written (here a file is
// in its way) is tried again without any further event, until the write succeeds.
func TestStateSaveRetriedUntilItWorks(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(dir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	h := runAgent(t, Options{Runtime: addingRuntime{1}, StateDir: dir, Logger: zap.New(core)}, logs)
	await.Until(t, 10*time.Second, "a failed save logged", func() bool { return logs.FilterMessage("cannot save state; retrying until it works").Len() == 1 })
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	await.Until(t, 10*time.Second, "the state saved once the dir can be made", func() bool {
		data, err := os.ReadFile(filepath.Join(dir, stateFile))
		var s savedState
		return err == nil && json.Unmarshal(data, &s) == nil && len(s.Containers) == 1
	}, h.logTail)
	// The line follows the write that the file shows.
	await.Until(t, 5*time.Second, "one log line for the recovery", func() bool { return logs.FilterMessage("state saved again").Len() == 1 }, h.logTail)
	await.Holds(t, 300*time.Millisecond, "no second recovery line", func() bool { return logs.FilterMessage("state saved again").Len() == 1 }, h.logTail)
}

// BenchmarkTenThousandEventsWithState: what 10,000 added containers cost the agent with
// a state dir, and how many state files they cause.
func BenchmarkTenThousandEventsWithState(b *testing.B) {
	const n = 10_000
	for b.Loop() {
		a := New(Options{Runtime: addingRuntime{n}, StateDir: b.TempDir()})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		for len(a.Containers()) < n {
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
		b.ReportMetric(float64(a.saves.Load()), "writes/op")
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/event")
}
