package gpu

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// xidNames are the mnemonics of the XIDs the agent meets most, from NVIDIA's XID catalog
// ("Analyzing XID catalog", docs.nvidia.com/deploy/xid-errors, 2025 edition).
var xidNames = map[uint64]string{
	13:  "GRAPHICS_ENGINE_EXCEPTION",
	31:  "GPU_MEMORY_PAGE_FAULT",
	43:  "RESETCHANNEL_VERIF_ERROR",
	45:  "PREEMPTIVE_REMOVAL",
	46:  "GPU_TIMEOUT_ERROR",
	48:  "DOUBLE_BIT_ECC_ERROR",
	62:  "PMU_HALT_ERROR",
	63:  "ECC_PAGE_RETIREMENT_OR_ROW_REMAP_RECORDED",
	64:  "ECC_PAGE_RETIREMENT_OR_ROW_REMAP_FAILURE",
	68:  "NVDEC0_EXCEPTION",
	74:  "NVLINK_ERROR",
	79:  "GPU_HAS_FALLEN_OFF_THE_BUS",
	92:  "HIGH_SINGLE_BIT_ECC_ERROR_RATE",
	94:  "CONTAINED_MEMORY_ERROR",
	95:  "UNCONTAINED_MEMORY_ERROR",
	109: "CTXSW_TIMEOUT_ERROR",
	110: "SECURITY_FAULT_ERROR",
	119: "GSP_RPC_TIMEOUT",
	120: "GSP_ERROR",
	136: "LINK_TRAINING_FAILED",
	140: "ECC_UNRECOVERED_ERROR",
	143: "GPU_INIT_ERROR",
	154: "GPU_RECOVERY_ACTION_CHANGED",
	155: "NVLINK_SW_DEFINED_ERROR",
	156: "RESOURCE_RETIREMENT_EVENT",
	158: "GPU_FATAL_TIMEOUT",
}

// XIDName returns an XID's mnemonic, or "UNKNOWN_XID".
func XIDName(xid uint64) string {
	if n, ok := xidNames[xid]; ok {
		return n
	}
	return "UNKNOWN_XID"
}

// DefaultFatalXIDs mark a GPU unhealthy: it needs a reset or a reboot.
var DefaultFatalXIDs = []uint64{46, 48, 62, 64, 74, 79, 95, 110, 119, 120, 136, 140, 143, 155, 156, 158}

// DefaultIgnoredXIDs are application faults that say nothing about the GPU (the NVIDIA
// device plugin's defaults).
var DefaultIgnoredXIDs = []uint64{13, 31, 43, 45, 68}

// XIDList is a set of XIDs, or every XID.
type XIDList struct {
	All  bool
	XIDs []uint64
}

// Contains reports whether the list holds xid.
func (l XIDList) Contains(xid uint64) bool { return l.All || slices.Contains(l.XIDs, xid) }

// ParseXIDList reads a list in the NVIDIA device plugin's syntax
// (DP_DISABLE_HEALTHCHECKS, DP_ENABLE_HEALTHCHECKS): "all", or numbers separated by
// commas. Empty entries are skipped; entries that are not non-negative integers are
// returned as errors, one per entry, while the rest of the list still applies.
func ParseXIDList(s string) (XIDList, []error) {
	var l XIDList
	var errs []error
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "":
		case strings.EqualFold(f, "all"):
			l.All = true
		default:
			x, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("%q is not an XID", f))
				continue
			}
			if !slices.Contains(l.XIDs, x) {
				l.XIDs = append(l.XIDs, x)
			}
		}
	}
	return l, errs
}

// Severity grades a signal.
type Severity int

// The severities, from harmless to fatal.
const (
	SeverityIgnore Severity = iota
	SeverityWarn
	SeverityFatal
)

func (s Severity) String() string { return [...]string{"ignore", "warn", "fatal"}[s] }

// MarshalText writes the severity's name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Policy decides what XIDs mean: the defaults, adjusted by the operator's lists. An XID
// the operator lists as fatal is fatal; one listed as ignored is ignored (so "all"
// silences every XID not explicitly fatal); otherwise DefaultFatalXIDs are fatal,
// DefaultIgnoredXIDs ignored, and every other XID a warning.
type Policy struct {
	Fatal  XIDList
	Ignore XIDList
}

// DefaultPolicy applies the default fatal and ignored sets alone.
func DefaultPolicy() Policy { return Policy{} }

// NewPolicy builds a policy from the operator's fatal and ignore lists in the device
// plugin's syntax; bad entries are reported and skipped.
func NewPolicy(fatal, ignore string) (Policy, []error) {
	f, errs := ParseXIDList(fatal)
	i, ierrs := ParseXIDList(ignore)
	return Policy{Fatal: f, Ignore: i}, append(errs, ierrs...)
}

// Severity says what an XID means under the policy.
func (p Policy) Severity(xid uint64) Severity {
	switch {
	case p.Fatal.Contains(xid):
		return SeverityFatal
	case p.Ignore.Contains(xid):
		return SeverityIgnore
	case slices.Contains(DefaultFatalXIDs, xid):
		return SeverityFatal
	case slices.Contains(DefaultIgnoredXIDs, xid):
		return SeverityIgnore
	}
	return SeverityWarn
}
