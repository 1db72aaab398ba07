package service

import (
	"fmt"
	"os"
	"reflect"
)

// Parse reads a service.json document strictly, applies defaults and validates it. The
// error, if any, is an ErrorList holding every problem found, each with its JSON path.
func Parse(data []byte, opts Options) (*Service, error) {
	root, err := parseTree(data)
	if err != nil {
		return nil, err
	}
	var s Service
	var errs ErrorList
	decode(root, reflect.ValueOf(&s).Elem(), "", &errs)
	s.setDefaults()
	s.validate(opts, &errs)
	if len(errs) > 0 {
		return nil, dropCascades(errs)
	}
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

// dropCascades keeps the first error at a path and drops those found inside a value that
// already failed, so that one mistake is reported once.
func dropCascades(errs ErrorList) ErrorList {
	out := errs[:0:0]
	for i, e := range errs {
		covered := false
		for j, o := range errs {
			if j < i && o.Path == e.Path && e.Path != "" {
				covered = true
				break
			}
			if o.Path != "" && len(e.Path) > len(o.Path) && e.Path[:len(o.Path)] == o.Path &&
				(e.Path[len(o.Path)] == '.' || e.Path[len(o.Path)] == '[') {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, e)
		}
	}
	return out
}
