package main

import (
	"bytes"
	"os"
	"testing"

	"github.com/probe-agent/probe-agent/bench/internal/results"
)

// TestPageIsAsGenerated checks that docs/benchmarks.md is what the report command
// wrote: every figure in it comes from a run, none is typed or edited by hand.
func TestPageIsAsGenerated(t *testing.T) {
	page, err := os.ReadFile("../../../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	if !sealed(page) {
		t.Fatal("docs/benchmarks.md was changed after bench/cmd/report wrote it; regenerate it with make bench")
	}
	if !bytes.Contains(page, []byte("| commit | ")) {
		t.Fatal("docs/benchmarks.md does not say which commit it measured")
	}
}

func TestSealBreaksOnAnyEdit(t *testing.T) {
	goal, pass := 0.95, true
	page := render([]results.Row{{Scenario: "tcp", Subject: "agent", Baseline: "raw", Metric: "probes_per_cpu_second",
		Value: 9, BaselineValue: 10, Ratio: 0.9, Goal: &goal, Pass: &pass}},
		results.Meta{Date: "2026-12-02T00:00:00Z", Commit: "0123456789ab", Mode: "full", Cores: 2})
	if !sealed(page) {
		t.Fatal("a fresh page is not sealed")
	}
	if !bytes.Contains(page, []byte("| commit | 0123456789ab |")) {
		t.Fatalf("no commit row in\n%s", page)
	}
	edited := bytes.Replace(page, []byte("| 0.9 |"), []byte("| 0.99 |"), 1)
	if bytes.Equal(edited, page) || sealed(edited) {
		t.Fatal("an edited figure keeps the seal")
	}
	if sealed(page[:len(page)-10]) || sealed(append(page, page...)) {
		t.Fatal("a cut or doubled page keeps the seal")
	}
}
