package service

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the README's table of EAS platform fields from Schema")

const (
	readme      = "../README.md"
	tableStart  = "<!-- schema:ignored -->\n"
	tableFinish = "<!-- /schema:ignored -->\n"
)

// ignoredTable writes Schema's EAS platform fields as a Markdown table.
func ignoredTable() string {
	var b strings.Builder
	b.WriteString("| field | type | what EAS does with it |\n|---|---|---|\n")
	for _, f := range Schema {
		if f.Use != Ignored {
			continue
		}
		typ := strings.ReplaceAll(f.Type, "|", " or ")
		if f.Open {
			typ += ", open"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.Path, typ, f.Doc)
	}
	return b.String()
}

// TestREADMEListsTheSchema: the README's table of ignored fields is Schema's; go test
// ./service -run README -update rewrites it.
func TestREADMEListsTheSchema(t *testing.T) {
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i, j := strings.Index(text, tableStart), strings.Index(text, tableFinish)
	if i < 0 || j < i {
		t.Fatalf("%s: no %q … %q block", readme, tableStart, tableFinish)
	}
	want := ignoredTable()
	if got := text[i+len(tableStart) : j]; got != want {
		if !*update {
			t.Fatalf("%s: the table of EAS platform fields differs from Schema; run go test ./service -run README -update", readme)
		}
		text = text[:i+len(tableStart)] + want + text[j:]
		if err := os.WriteFile(readme, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
