package gpu

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// node is an 8-GPU node whose /dev/nvidiaN minors run backwards, so that a test that
// confused minors with indexes would fail.
func node() []Device {
	devs := make([]Device, 8)
	for i := range devs {
		devs[i] = Device{Index: i, Minor: 7 - i, UUID: fmt.Sprintf("GPU-3c2b6f5e-4a1d-4a7e-9f0b-%012d", i), Name: "NVIDIA H100 80GB HBM3"}
	}
	return devs
}

func TestFromSpecFixtures(t *testing.T) {
	t.Parallel()
	cases := []struct {
		file      string
		all       bool
		indexes   []int
		sources   string
		unmatched []string
	}{
		{"envvar-uuids.json", false, []int{2, 5}, "env", nil},
		{"envvar-index-replicas.json", false, []int{1, 6}, "env", nil},
		{"envvar-all.json", true, []int{0, 1, 2, 3, 4, 5, 6, 7}, "env", nil},
		{"envvar-none.json", false, nil, "", nil},
		{"volume-mounts.json", false, []int{0, 7}, "mounts", nil},
		{"cdi-annotations.json", false, []int{3, 4}, "cdi", nil},
		{"device-nodes.json", false, []int{4}, "devices", nil}, // minor 3 is index 4 here
		{"mig.json", false, nil, "env", []string{"MIG-8a1f0c2e-1b2c-5d3e-9f4a-0123456789ab"}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile("../testdata/oci/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			var s specs.Spec
			if err := json.Unmarshal(data, &s); err != nil {
				t.Fatal(err)
			}
			r := FromSpec(&s)
			if r.All != tc.all || strings.Join(r.Sources, ",") != tc.sources {
				t.Fatalf("request %+v", r)
			}
			got, unmatched := r.Resolve(node())
			var idx []int
			for _, d := range got {
				idx = append(idx, d.Index)
			}
			if !slices.Equal(idx, tc.indexes) || !slices.Equal(unmatched, tc.unmatched) {
				t.Fatalf("resolved %v unmatched %v, want %v %v", idx, unmatched, tc.indexes, tc.unmatched)
			}
			if (len(tc.indexes) == 0 && len(tc.unmatched) == 0) != r.Empty() {
				t.Fatalf("Empty() = %v", r.Empty())
			}
		})
	}
}

// A MIG slice's UUID maps to the GPU it is part of, whose health is the slice's.
func TestResolveMIGSliceToItsGPU(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../testdata/oci/mig.json")
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	devs := node()
	devs[5].MIG = true
	devs[5].MIGDevices = []MIGDevice{{UUID: "MIG-00000000-0000-5000-8000-000000000000", GI: 1, CI: 0},
		{UUID: "mig-8a1f0c2e-1b2c-5d3e-9f4a-0123456789AB", GI: 2, CI: 0}}
	got, unmatched := FromSpec(&s).Resolve(devs)
	if len(got) != 1 || got[0].Index != 5 || len(unmatched) != 0 {
		t.Fatalf("resolved %v, unmatched %v; want GPU 5", got, unmatched)
	}
}

func TestFromSpecNil(t *testing.T) {
	t.Parallel()
	if !FromSpec(nil).Empty() {
		t.Fatal("nil spec asks for GPUs")
	}
}

func TestParseXIDList(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		all  bool
		xids []uint64
		errs int
	}{
		{"", false, nil, 0},
		{"all", true, nil, 0},
		{"ALL", true, nil, 0},
		{"68", false, []uint64{68}, 0},
		{"68,67", false, []uint64{68, 67}, 0},
		{"68,not-an-int,67", false, []uint64{68, 67}, 1},
		{"-68", false, nil, 1},
		{"68,", false, []uint64{68}, 0},
		{" 68 , 68 ,79", false, []uint64{68, 79}, 0},
	}
	for _, tc := range cases {
		l, errs := ParseXIDList(tc.in)
		if l.All != tc.all || !slices.Equal(l.XIDs, tc.xids) || len(errs) != tc.errs {
			t.Errorf("ParseXIDList(%q) = %+v, %v", tc.in, l, errs)
		}
	}
}

func TestPolicySeverity(t *testing.T) {
	t.Parallel()
	def := DefaultPolicy()
	for xid, want := range map[uint64]Severity{79: SeverityFatal, 48: SeverityFatal, 13: SeverityIgnore, 31: SeverityIgnore, 94: SeverityWarn, 63: SeverityWarn, 999: SeverityWarn} {
		if got := def.Severity(xid); got != want {
			t.Errorf("default %d: %v, want %v", xid, got, want)
		}
	}
	p, errs := NewPolicy("109,13", "74,all")
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	for xid, want := range map[uint64]Severity{109: SeverityFatal, 13: SeverityFatal, 74: SeverityIgnore, 79: SeverityIgnore, 94: SeverityIgnore} {
		if got := p.Severity(xid); got != want {
			t.Errorf("custom %d: %v, want %v", xid, got, want)
		}
	}
	if XIDName(79) != "GPU_HAS_FALLEN_OFF_THE_BUS" || XIDName(1) != "UNKNOWN_XID" {
		t.Error("XID names")
	}
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_000_000, 0)
	pol := DefaultPolicy()
	healthy := &Sample{UUID: "GPU-a", TempC: Some[uint32](40), SlowdownTempC: Some[uint32](87),
		ECCUncorrVolatile: Some[uint64](0), ECCCorrVolatile: Some[uint64](3), RecoveryAction: Some[uint32](0)}
	xid := func(x uint64) []Event {
		return []Event{{UUID: "GPU-a", Kind: EventXID, XID: x, GI: NoInstance, CI: NoInstance}}
	}
	with := func(f func(*Sample)) *Sample { s := *healthy; f(&s); return &s }

	v := Evaluate(Verdict{}, nil, healthy, nil, t0, pol)
	if v.State != Healthy || !v.Since.Equal(t0) {
		t.Fatalf("healthy: %+v", v)
	}
	if v := Evaluate(v, healthy, healthy, xid(13), t0, pol); v.State != Healthy {
		t.Fatalf("ignored XID 13 changed the state: %+v", v)
	}
	if v := Evaluate(v, healthy, healthy, xid(94), t0, pol); v.State != Degraded || v.Codes() != "xid_94" {
		t.Fatalf("warning XID: %+v", v)
	}
	bad := Evaluate(v, healthy, healthy, xid(79), t0.Add(time.Second), pol)
	if bad.State != Unhealthy || bad.XID() != 79 || !bad.Since.Equal(t0.Add(time.Second)) {
		t.Fatalf("fatal XID 79: %+v", bad)
	}
	// Sticky until the GPU shows it was reset.
	still := Evaluate(bad, healthy, healthy, nil, t0.Add(2*time.Second), pol)
	if still.State != Unhealthy || still.XID() != 79 || !still.Since.Equal(bad.Since) {
		t.Fatalf("not sticky: %+v", still)
	}
	reset := with(func(s *Sample) { s.ECCCorrVolatile = Some[uint64](0) })
	if v := Evaluate(still, healthy, reset, nil, t0.Add(3*time.Second), pol); v.State != Healthy {
		t.Fatalf("reset not recognised: %+v", v)
	}
	for name, s := range map[string]*Sample{
		"lost":             with(func(s *Sample) { s.Lost = true }),
		"recovery action":  with(func(s *Sample) { s.RecoveryAction = Some[uint32](2) }),
		"row remap failed": with(func(s *Sample) { s.RemapFailed = Some(true) }),
	} {
		if v := Evaluate(Verdict{}, healthy, s, nil, t0, pol); v.State != Unhealthy {
			t.Errorf("%s: %+v", name, v)
		}
	}
	for name, s := range map[string]*Sample{
		"remap pending":   with(func(s *Sample) { s.RemapPending = Some(true) }),
		"new uncorrected": with(func(s *Sample) { s.ECCUncorrVolatile = Some[uint64](2) }),
		"hot":             with(func(s *Sample) { s.TempC = Some[uint32](90) }),
		"hw slowdown":     with(func(s *Sample) { s.ClockEventReasons = Some[uint64](0x40) }),
	} {
		if v := Evaluate(Verdict{}, healthy, s, nil, t0, pol); v.State != Degraded {
			t.Errorf("%s: %+v", name, v)
		}
	}
	if v := Evaluate(Verdict{State: Healthy, Since: t0}, healthy, nil, nil, t0.Add(time.Minute), pol); v.State != Unknown {
		t.Fatalf("no sample: %+v", v)
	}
	recovered := Evaluate(Verdict{State: Unhealthy, Since: t0, Reasons: []Reason{{Code: "recovery_action"}}},
		with(func(s *Sample) { s.RecoveryAction = Some[uint32](2) }), healthy, nil, t0, pol)
	if recovered.State != Healthy {
		t.Fatalf("recovery action back to none: %+v", recovered)
	}
}
