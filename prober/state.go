package prober

import "github.com/probe-agent/probe-agent/service"

// Value is a probe type's published result for one container instance.
type Value int8

// The published values; a startup probe starts Unknown until it crosses a threshold.
const (
	ValueUnknown Value = iota
	ValueSuccess
	ValueFailure
)

func (v Value) String() string {
	switch v {
	case ValueSuccess:
		return "success"
	case ValueFailure:
		return "failure"
	}
	return "unknown"
}

// State is the kubelet's threshold state machine for one probe of one container
// instance (pkg/kubelet/prober/worker.go). It is pure: callers feed it outcomes and
// act on the changes it reports.
type State struct {
	Type             service.ProbeType
	SuccessThreshold int
	FailureThreshold int

	// Value is the published result.
	Value Value
	// OnHold is set once a liveness probe fails or a startup probe decides; the probe
	// stays silent until a new container instance resets it.
	OnHold bool

	last Value // the last counted result and how many times in a row it came
	run  int

	// streak counts the latest consecutive results for reporting; unlike run it is not
	// cleared by going on hold.
	streakValue Value
	streak      int
}

// NewState returns the state of a new container instance: liveness starts as a success,
// readiness as a failure and startup as unknown.
func NewState(t service.ProbeType, successThreshold, failureThreshold int) State {
	s := State{Type: t, SuccessThreshold: successThreshold, FailureThreshold: failureThreshold}
	s.Reset()
	return s
}

// Reset returns the state to its initial value, as for a new container instance.
func (s *State) Reset() {
	switch s.Type {
	case service.Liveness:
		s.Value = ValueSuccess
	case service.Readiness:
		s.Value = ValueFailure
	default:
		s.Value = ValueUnknown
	}
	s.OnHold = false
	s.last, s.run = ValueUnknown, 0
	s.streakValue, s.streak = ValueUnknown, 0
}

// Observe counts one probe outcome and reports whether the published value changed. A
// warning counts as a success. Unknown (the probe could not run) is not counted at all,
// and nothing is counted while the state is on hold.
func (s *State) Observe(o Outcome) (changed bool) {
	var r Value
	switch o {
	case Success, Warning:
		r = ValueSuccess
	case Failure:
		r = ValueFailure
	default:
		return false
	}
	if s.OnHold {
		return false
	}
	if s.streakValue == r {
		s.streak++
	} else {
		s.streakValue, s.streak = r, 1
	}
	if s.last == r {
		s.run++
	} else {
		s.last, s.run = r, 1
	}
	if (r == ValueFailure && s.run < s.FailureThreshold) || (r == ValueSuccess && s.run < s.SuccessThreshold) {
		return false
	}
	changed = s.Value != r
	s.Value = r
	if (s.Type == service.Liveness && r == ValueFailure) || s.Type == service.Startup {
		s.OnHold = true
		s.run = 0
	}
	return changed
}

// Consecutive returns how many successes and how many failures came last in a row; at
// most one of them is non-zero.
func (s *State) Consecutive() (successes, failures int) {
	switch s.streakValue {
	case ValueSuccess:
		return s.streak, 0
	case ValueFailure:
		return 0, s.streak
	}
	return 0, 0
}

// Threshold returns the threshold that applies to results of value v.
func (s *State) Threshold(v Value) int {
	if v == ValueSuccess {
		return s.SuccessThreshold
	}
	return s.FailureThreshold
}
