package gpu

import (
	"fmt"
	"strings"
	"time"
)

// State is a GPU's health.
type State int

// The states. Unknown (no data: NVML unavailable, a poll failed) never takes readiness
// away from a container.
const (
	Unknown State = iota
	Healthy
	Degraded
	Unhealthy
)

func (s State) String() string { return [...]string{"unknown", "healthy", "degraded", "unhealthy"}[s] }

// Reason is one finding behind a verdict.
type Reason struct {
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	Detail   string   `json:"detail"`
	XID      uint64   `json:"xid,omitempty"`
}

// Verdict is a GPU's health with the reasons for it.
type Verdict struct {
	State   State
	Reasons []Reason
	// Since is when the GPU entered State.
	Since time.Time
}

// Codes lists the reasons' codes, for logs.
func (v Verdict) Codes() string {
	c := make([]string, len(v.Reasons))
	for i, r := range v.Reasons {
		c[i] = r.Code
	}
	return strings.Join(c, ",")
}

// XID returns the first XID among the reasons, or 0.
func (v Verdict) XID() uint64 {
	for _, r := range v.Reasons {
		if r.XID != 0 {
			return r.XID
		}
	}
	return 0
}

// Evaluate is the health verdict of one GPU, a pure function of its previous verdict
// and sample, its current sample, the events since the previous evaluation, the time
// and the policy.
//
// Unhealthy (takes readiness away; sticky): the GPU is lost, a fatal XID, a recovery
// action other than none, a failed row remap. It stays Unhealthy until the GPU shows it
// was reset: volatile ECC counters drop, or a recovery action returns to none.
// Degraded (reported, readiness kept): warning XIDs within the window, a pending row
// remap or page retirement, new uncorrectable ECC errors, hardware slowdown, a
// temperature at or over the slowdown threshold. Unknown: no sample.
func Evaluate(prev Verdict, prevSample, cur *Sample, events []Event, now time.Time, pol Policy) Verdict {
	if cur == nil {
		return transition(prev, Verdict{State: Unknown}, now)
	}
	var reasons []Reason
	fatal := func(code, detail string, xid uint64) {
		reasons = append(reasons, Reason{Code: code, Severity: SeverityFatal, Detail: detail, XID: xid})
	}
	warn := func(code, detail string, xid uint64) {
		reasons = append(reasons, Reason{Code: code, Severity: SeverityWarn, Detail: detail, XID: xid})
	}
	if cur.Lost {
		fatal("gpu_lost", "the GPU is lost (fallen off the bus)", 0)
	}
	for _, e := range events {
		switch e.Kind {
		case EventXID:
			switch pol.Severity(e.XID) {
			case SeverityFatal:
				fatal(fmt.Sprintf("xid_%d", e.XID), XIDName(e.XID), e.XID)
			case SeverityWarn:
				warn(fmt.Sprintf("xid_%d", e.XID), XIDName(e.XID), e.XID)
			}
		case EventDBE:
			fatal("double_bit_ecc", "double-bit ECC error", 0)
		case EventLost, EventUnavailable:
			fatal("gpu_lost", "the GPU is lost or unavailable", 0)
		case EventRecoveryAction:
			// The sample's recovery action says which; nothing to add here.
		}
	}
	if cur.RecoveryAction.OK && cur.RecoveryAction.V != 0 {
		fatal("recovery_action", fmt.Sprintf("recovery action %d requested by the driver", cur.RecoveryAction.V), 0)
	}
	if cur.RemapFailed.OK && cur.RemapFailed.V {
		fatal("row_remap_failed", "row remapping failed", 0)
	}
	if cur.RemapPending.OK && cur.RemapPending.V {
		warn("row_remap_pending", "a row remap waits for the next GPU reset", 0)
	}
	if cur.RetiredPagesPending.OK && cur.RetiredPagesPending.V {
		warn("retired_pages_pending", "page retirement waits for a driver reload", 0)
	}
	if prevSample != nil && prevSample.ECCUncorrVolatile.OK && cur.ECCUncorrVolatile.OK &&
		cur.ECCUncorrVolatile.V > prevSample.ECCUncorrVolatile.V {
		warn("ecc_uncorrectable", fmt.Sprintf("%d new uncorrectable ECC errors", cur.ECCUncorrVolatile.V-prevSample.ECCUncorrVolatile.V), 0)
	}
	if cur.ClockEventReasons.OK && cur.ClockEventReasons.V&hwSlowdownMask != 0 {
		warn("hw_slowdown", "hardware slowdown (thermal or power brake)", 0)
	}
	if cur.TempC.OK && cur.SlowdownTempC.OK && cur.SlowdownTempC.V > 0 && cur.TempC.V >= cur.SlowdownTempC.V {
		warn("temperature", fmt.Sprintf("%d °C, at or over the slowdown threshold %d °C", cur.TempC.V, cur.SlowdownTempC.V), 0)
	}

	next := Verdict{State: Healthy, Reasons: reasons}
	for _, r := range reasons {
		if r.Severity == SeverityFatal {
			next.State = Unhealthy
			break
		}
		next.State = Degraded
	}
	if prev.State == Unhealthy && next.State != Unhealthy && !wasReset(prevSample, cur) {
		next = Verdict{State: Unhealthy, Reasons: prev.Reasons}
	}
	return transition(prev, next, now)
}

// Clock event reason bits of hardware slowdown (nvmlClocksEventReason*): HW slowdown,
// HW thermal slowdown and HW power brake.
const hwSlowdownMask = 0x8 | 0x40 | 0x80

// wasReset reports evidence that the GPU was reset since the previous sample.
func wasReset(prev, cur *Sample) bool {
	if prev == nil || cur == nil {
		return false
	}
	if prev.ECCUncorrVolatile.OK && cur.ECCUncorrVolatile.OK && cur.ECCUncorrVolatile.V < prev.ECCUncorrVolatile.V {
		return true
	}
	if prev.ECCCorrVolatile.OK && cur.ECCCorrVolatile.OK && cur.ECCCorrVolatile.V < prev.ECCCorrVolatile.V {
		return true
	}
	return prev.RecoveryAction.OK && prev.RecoveryAction.V != 0 && cur.RecoveryAction.OK && cur.RecoveryAction.V == 0 &&
		!cur.Lost
}

func transition(prev, next Verdict, now time.Time) Verdict {
	if next.State == prev.State && !prev.Since.IsZero() {
		next.Since = prev.Since
	} else {
		next.Since = now
	}
	return next
}
