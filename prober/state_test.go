package prober

import (
	"testing"

	"github.com/probe-agent/probe-agent/service"
)

const (
	S = Success
	W = Warning
	F = Failure
	E = Unknown
)

func TestStateInitialValues(t *testing.T) {
	t.Parallel()
	for typ, want := range map[service.ProbeType]Value{
		service.Liveness:  ValueSuccess,
		service.Readiness: ValueFailure,
		service.Startup:   ValueUnknown,
	} {
		if s := NewState(typ, 1, 3); s.Value != want || s.OnHold {
			t.Errorf("%s initial = %v hold=%v, want %v", typ, s.Value, s.OnHold, want)
		}
	}
}

// TestStateMachine walks the rules of the kubelet's worker.go one table row at a time.
func TestStateMachine(t *testing.T) {
	t.Parallel()
	type step struct {
		in      Outcome
		value   Value
		changed bool
		hold    bool
	}
	cases := []struct {
		name         string
		typ          service.ProbeType
		succ, fail   int
		steps        []step
		wantSucc, wF int
	}{
		{"liveness failure below threshold keeps success", service.Liveness, 1, 3, []step{
			{F, ValueSuccess, false, false}, {F, ValueSuccess, false, false},
		}, 0, 2},
		{"liveness failure at threshold publishes failure and holds", service.Liveness, 1, 3, []step{
			{F, ValueSuccess, false, false}, {F, ValueSuccess, false, false}, {F, ValueFailure, true, true},
		}, 0, 3},
		{"liveness on hold ignores everything", service.Liveness, 1, 1, []step{
			{F, ValueFailure, true, true}, {S, ValueFailure, false, true}, {S, ValueFailure, false, true},
		}, 0, 1},
		{"a success between failures restarts the count", service.Liveness, 1, 2, []step{
			{F, ValueSuccess, false, false}, {S, ValueSuccess, false, false}, {F, ValueSuccess, false, false},
			{F, ValueFailure, true, true},
		}, 0, 2},
		{"errors are discarded, not counted and not resetting", service.Liveness, 1, 2, []step{
			{F, ValueSuccess, false, false}, {E, ValueSuccess, false, false}, {E, ValueSuccess, false, false},
			{F, ValueFailure, true, true},
		}, 0, 2},
		{"readiness starts failed; failures change nothing", service.Readiness, 1, 3, []step{
			{F, ValueFailure, false, false}, {F, ValueFailure, false, false}, {F, ValueFailure, false, false},
			{F, ValueFailure, false, false},
		}, 0, 4},
		{"readiness success threshold", service.Readiness, 3, 1, []step{
			{S, ValueFailure, false, false}, {S, ValueFailure, false, false}, {S, ValueSuccess, true, false},
			{S, ValueSuccess, false, false},
		}, 4, 0},
		{"readiness never holds and flips both ways", service.Readiness, 1, 2, []step{
			{S, ValueSuccess, true, false}, {F, ValueSuccess, false, false}, {F, ValueFailure, true, false},
			{S, ValueSuccess, true, false},
		}, 1, 0},
		{"warning counts as success", service.Readiness, 2, 1, []step{
			{W, ValueFailure, false, false}, {S, ValueSuccess, true, false},
		}, 2, 0},
		{"startup success publishes and holds", service.Startup, 1, 3, []step{
			{F, ValueUnknown, false, false}, {S, ValueSuccess, true, true}, {F, ValueSuccess, false, true},
		}, 1, 0},
		{"startup failure at threshold publishes and holds", service.Startup, 1, 2, []step{
			{F, ValueUnknown, false, false}, {F, ValueFailure, true, true}, {S, ValueFailure, false, true},
		}, 0, 2},
		{"startup errors never decide", service.Startup, 1, 1, []step{
			{E, ValueUnknown, false, false}, {E, ValueUnknown, false, false},
		}, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := NewState(tc.typ, tc.succ, tc.fail)
			for i, st := range tc.steps {
				changed := s.Observe(st.in)
				if s.Value != st.value || changed != st.changed || s.OnHold != st.hold {
					t.Fatalf("step %d (%v): value=%v changed=%v hold=%v, want %v %v %v",
						i, st.in, s.Value, changed, s.OnHold, st.value, st.changed, st.hold)
				}
			}
			if gs, gf := s.Consecutive(); gs != tc.wantSucc || gf != tc.wF {
				t.Errorf("consecutive = %d/%d, want %d/%d", gs, gf, tc.wantSucc, tc.wF)
			}
		})
	}
}

func TestStateResetForNewInstance(t *testing.T) {
	t.Parallel()
	s := NewState(service.Liveness, 1, 1)
	if !s.Observe(F) || !s.OnHold {
		t.Fatal("liveness did not fail and hold")
	}
	s.Reset()
	if s.Value != ValueSuccess || s.OnHold {
		t.Fatalf("after reset: %v hold=%v", s.Value, s.OnHold)
	}
	if succ, fail := s.Consecutive(); succ != 0 || fail != 0 {
		t.Fatalf("reset kept counts %d/%d", succ, fail)
	}
	if !s.Observe(F) {
		t.Fatal("new instance does not act on a failure")
	}
}

func TestStateThreshold(t *testing.T) {
	t.Parallel()
	s := NewState(service.Readiness, 2, 5)
	if s.Threshold(ValueSuccess) != 2 || s.Threshold(ValueFailure) != 5 {
		t.Fatal("thresholds")
	}
}
