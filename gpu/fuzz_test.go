package gpu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FuzzParseXIDList: any operator input gives a list and errors, never a panic; every
// number it accepted is in the list, and there is at most one error per entry.
func FuzzParseXIDList(f *testing.F) {
	for _, s := range []string{"", "all", "79,48", "68,not-an-int,67", "-68", "13,,31,", " 79 , ALL ", "18446744073709551616"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, errs := ParseXIDList(s)
		if len(errs) > len(strings.Split(s, ",")) {
			t.Fatalf("%q: %d errors", s, len(errs))
		}
		for _, x := range l.XIDs {
			if !l.Contains(x) {
				t.Fatalf("%q: %d accepted but not contained", s, x)
			}
		}
		pol, _ := NewPolicy(s, "")
		for _, x := range l.XIDs {
			if pol.Severity(x) != SeverityFatal {
				t.Fatalf("%q: %d listed as fatal is %v", s, x, pol.Severity(x))
			}
		}
	})
}

// FuzzFromSpec: any OCI spec yields a request that resolves onto a node without a
// panic, to GPUs of that node only, with Empty true exactly when nothing is asked.
func FuzzFromSpec(f *testing.F) {
	files, _ := filepath.Glob("../testdata/oci/*.json")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s specs.Spec
		if json.Unmarshal(data, &s) != nil {
			return
		}
		r := FromSpec(&s)
		devs := node()
		got, unmatched := r.Resolve(devs)
		for _, d := range got {
			if d.Index < 0 || d.Index >= len(devs) || devs[d.Index].UUID != d.UUID {
				t.Fatalf("resolved to a GPU the node does not have: %+v", d)
			}
		}
		if r.Empty() != (!r.All && len(r.IDs) == 0 && len(r.Minors) == 0) {
			t.Fatalf("Empty() %v for %+v", r.Empty(), r)
		}
		if r.Empty() && (len(got) != 0 || len(unmatched) != 0) {
			t.Fatalf("an empty request resolved to %v, %v", got, unmatched)
		}
		if r.All && len(got) != len(devs) {
			t.Fatalf("all resolved to %d GPUs", len(got))
		}
	})
}
