// Package await is how tests wait for something that happens concurrently: poll a
// condition until it holds, or check that it keeps holding, and fail the test with what
// was awaited and, when given, what the world looked like. Under testing/synctest the
// polls advance the bubble's fake clock, so the same helpers wait deterministically.
package await

import (
	"testing"
	"time"
)

// Interval is how often conditions are polled.
const Interval = 5 * time.Millisecond

// Poll calls cond every Interval until it returns true or within has passed, and
// reports whether it held. Use it where a timeout is not a failure.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
	return true
}

// Until waits up to within for cond to hold and fails the test if it does not, naming
// what was awaited and appending detail(), when given, to the failure.
func Until(t testing.TB, within time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	if !Poll(within, cond) {
		t.Fatalf("timed out after %v waiting for %s%s", within, what, explain(detail))
	}
}

// Holds checks cond every Interval for the whole of d and fails the test the first time
// it does not hold.
func Holds(t testing.TB, d time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			t.Fatalf("%s stopped holding%s", what, explain(detail))
		}
		time.Sleep(Interval)
	}
}

func explain(detail []func() string) string {
	s := ""
	for _, d := range detail {
		s += "\n" + d()
	}
	return s
}
