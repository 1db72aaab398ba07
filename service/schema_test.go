package service

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// goFields lists the schema patterns of the JSON fields of Go type t, found under
// pattern.
func goFields(t reflect.Type, pattern string, out map[string]bool) {
	switch t.Kind() {
	case reflect.Pointer:
		goFields(t.Elem(), pattern, out)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Struct || t.Elem().Kind() == reflect.Pointer {
			out[pattern+"[]"] = true
			goFields(t.Elem(), pattern+"[]", out)
		}
	case reflect.Struct:
		if t == secondsType {
			return
		}
		for name, i := range jsonFields(t) {
			p := childPattern(pattern, name)
			out[p] = true
			goFields(t.Field(i).Type, p, out)
		}
	}
}

// TestSchemaMatchesTheGoTypes: every field the Go types decode is in Schema as used or
// an extension, and every used field or extension in Schema is decoded by them.
func TestSchemaMatchesTheGoTypes(t *testing.T) {
	t.Parallel()
	decoded := map[string]bool{}
	goFields(reflect.TypeFor[Service](), "", decoded)
	for p := range decoded {
		f := lookup(p)
		switch {
		case f == nil:
			t.Errorf("%s: decoded, missing from Schema", p)
		case f.Use == Ignored:
			t.Errorf("%s: decoded, listed as ignored", p)
		}
	}
	for p, f := range schema {
		if f.Use != Ignored && !decoded[p] {
			t.Errorf("%s: %s in Schema, no Go field decodes it", p, f.Use)
		}
		if f.Use == Ignored && decoded[p] {
			t.Errorf("%s: ignored in Schema, decoded", p)
		}
		if i := strings.LastIndexAny(p, ".["); i > 0 {
			parent := strings.TrimSuffix(p[:i+1], ".")
			parent = strings.TrimSuffix(parent, "[")
			if strings.HasSuffix(p, "[]") {
				parent = strings.TrimSuffix(p, "[]")
			}
			if lookup(parent) == nil {
				t.Errorf("%s: its parent %s is not in Schema", p, parent)
			}
		}
		for _, typ := range strings.Split(f.Type, "|") {
			if !slices.Contains([]string{"string", "integer", "number", "boolean", "object", "array"}, typ) {
				t.Errorf("%s: type %q", p, f.Type)
			}
		}
	}
}

// TestEveryKnownFieldLoads builds, for each field of Schema, a document holding it with
// a value of its type, and parses it: no known field is ever an unknown field.
func TestEveryKnownFieldLoads(t *testing.T) {
	t.Parallel()
	for p, f := range schema {
		doc := documentWith(p, f)
		if _, err := Parse([]byte(doc), Options{}); err != nil {
			for _, e := range Errors(err) {
				if strings.Contains(e.Msg, "unknown field") {
					t.Errorf("%s: %v\n%s", p, e, doc)
				}
			}
		}
	}
}

// documentWith returns a service.json document that holds the field at pattern p.
func documentWith(p string, f *Field) string {
	values := map[string]string{"string": `"x"`, "integer": "1", "number": "1.5", "boolean": "true", "object": "{}", "array": "[]"}
	val := values[strings.Split(f.Type, "|")[0]]
	// Build the value from the innermost field outwards.
	parts := strings.Split(p, ".")
	for i := len(parts) - 1; i >= 0; i-- {
		key := parts[i]
		for strings.HasSuffix(key, "[]") {
			key = strings.TrimSuffix(key, "[]")
			val = "[" + val + "]"
		}
		if key == "" {
			continue
		}
		val = `{"` + key + `":` + val + `}`
	}
	// Merge with the fields every document needs, unless p is inside them.
	inner := strings.TrimSuffix(strings.TrimPrefix(val, "{"), "}")
	switch {
	case strings.HasPrefix(p, "metadata"):
		return `{` + inner + `,"containers":[{"command":"a"}]}`
	case strings.HasPrefix(p, "containers"):
		return `{"metadata":{"name":"s"},` + inner + `}`
	}
	return `{"metadata":{"name":"s"},"containers":[{"command":"a"}],` + inner + `}`
}

func TestSuggest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ parent, key, want string }{
		{"containers[]", "readiness_chek", "readiness_check"},
		{"containers[].liveness_check", "failureThreshold", "failure_threshold"},
		{"containers[].liveness_check", "timeout", ""},
		{"", "contianers", "containers"},
		{"", "colour", ""},
		{"metadata", "nmae", "name"},
	} {
		if got := suggest(tc.parent, tc.key); got != tc.want {
			t.Errorf("suggest(%q, %q) = %q, want %q", tc.parent, tc.key, got, tc.want)
		}
	}
}

func TestIsInteger(t *testing.T) {
	t.Parallel()
	for num, want := range map[string]bool{"1": true, "-3": true, "4.0": true, "2e3": true, "1.5": false, "1.5e1": true, "1.25e1": false, "1e-2": false, "0.10e1": true} {
		if got := isInteger(num); got != want {
			t.Errorf("isInteger(%s) = %v, want %v", num, got, want)
		}
	}
}

// indexRE matches an array index in a JSON path.
var indexRE = regexp.MustCompile(`\[[0-9]+\]`)

// patternOf turns a JSON path into its Schema pattern; ok is false when a key holds a
// character that makes the path ambiguous.
func patternOf(path string) (string, bool) {
	p := indexRE.ReplaceAllString(path, "[]")
	for _, seg := range strings.Split(strings.ReplaceAll(p, "[]", ""), ".") {
		if seg == "" || strings.ContainsAny(seg, "[]\"…") {
			return "", false
		}
	}
	return p, true
}

// FuzzEASFields parses documents built around the EAS files: whatever the input, no
// field of Schema is ever reported unknown, every path listed as ignored is an EAS
// platform field, and nothing panics.
func FuzzEASFields(f *testing.F) {
	files, _ := filepath.Glob("../testdata/eas/*.json")
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, p := range []string{"metadata.rpc", "cloud.computing.instances[].spot_price_limit", "containers[].prepare", "storage[].mount_path"} {
		f.Add([]byte(documentWith(p, lookup(p))))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, Options{})
		for _, e := range Errors(err) {
			if !strings.HasPrefix(e.Msg, "unknown field") {
				continue
			}
			if p, ok := patternOf(e.Path); ok && lookup(p) != nil {
				t.Fatalf("%s is in Schema, reported %q", e.Path, e.Msg)
			}
		}
		if err != nil {
			return
		}
		for _, path := range s.Ignored {
			p, ok := patternOf(path)
			if !ok {
				continue
			}
			if f := lookup(p); f == nil || f.Use != Ignored {
				t.Fatalf("%s listed as ignored, Schema says %v", path, f)
			}
		}
	})
}
