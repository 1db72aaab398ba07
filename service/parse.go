package service

import (
	"fmt"
	"os"
	"reflect"
)

// Parse reads a service.json document strictly, applies defaults and validates it. The
// error, if any, is an ErrorList holding every problem found, each with its JSON path.
// The EAS platform fields found are listed in the result's Ignored, and what loads but
// deserves a word in its Warnings.
func Parse(data []byte, opts Options) (*Service, error) {
	root, err := parseTree(data)
	if err != nil {
		return nil, err
	}
	var s Service
	var d decoder
	d.decode(root, reflect.ValueOf(&s).Elem(), "", "")
	errs := d.errs
	s.setDefaults()
	s.validate(opts, &errs, &s.Warnings)
	if len(errs) > 0 {
		return nil, report(errs)
	}
	s.Ignored = d.ignored
	return &s, nil
}

// ParseFile reads and parses a service.json file; errors name the file.
func ParseFile(path string, opts Options) (*Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(data, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// MaxErrors is how many errors one document reports; the rest are counted.
const MaxErrors = 100

// report turns the errors found in one document into what the caller gets: cascades
// dropped, at most MaxErrors of them, then a count of the rest.
func report(errs ErrorList) ErrorList {
	errs = dropCascades(errs)
	if n := len(errs) - MaxErrors; n > 0 {
		errs = append(errs[:MaxErrors:MaxErrors], &FieldError{Msg: fmt.Sprintf("… and %d more errors", n)})
	}
	return errs
}

// dropCascades keeps the first error at a path and drops those found inside a value
// that failed (an error at an enclosing path, anywhere in the list), so that one
// mistake is reported once. It looks at each error's enclosing paths only, so its cost
// is linear in the number of errors.
func dropCascades(errs ErrorList) ErrorList {
	failed := make(map[string]bool, len(errs))
	for _, e := range errs {
		if e.Path != "" {
			failed[e.Path] = true
		}
	}
	seen := make(map[string]bool, len(errs))
	out := errs[:0:0]
	for _, e := range errs {
		if e.Path != "" && (seen[e.Path] || insideFailed(e.Path, failed)) {
			continue
		}
		seen[e.Path] = true
		out = append(out, e)
	}
	return out
}

// insideFailed reports whether a path enclosing p (cut at a '.' or a '[') failed.
func insideFailed(p string, failed map[string]bool) bool {
	for i := len(p) - 1; i > 0; i-- {
		if (p[i] == '.' || p[i] == '[') && failed[p[:i]] {
			return true
		}
	}
	return false
}
