package service

import (
	"fmt"
	"os"
	"reflect"
	"time"
)

// Defaults for check fields, as in the kubelet and the EAS documentation.
const (
	DefaultPeriod                  = 10 * time.Second
	DefaultTimeout                 = time.Second
	DefaultSuccessThreshold        = 1
	DefaultReadinessFailThreshold  = 3
	DefaultLivenessFailThreshold   = 1
	DefaultStartupFailureThreshold = 1
	// MinDuration is the shortest non-zero duration a check may use.
	MinDuration = 10 * time.Millisecond
)

// DefaultReservedPorts are the ports the EAS serving engine keeps for itself.
var DefaultReservedPorts = []int{8080, 9090}

// Options adjust parsing and validation.
type Options struct {
	// ReservedPorts may not be used as a container or check port; nil means
	// DefaultReservedPorts, an empty non-nil slice means none.
	ReservedPorts []int
}

func (o Options) reserved() []int {
	if o.ReservedPorts == nil {
		return DefaultReservedPorts
	}
	return o.ReservedPorts
}

// preset applies the defaults of a check that appears under key.
func (c *Check) preset(key string) {
	c.PeriodSeconds = Seconds(DefaultPeriod)
	c.TimeoutSeconds = Seconds(DefaultTimeout)
	c.SuccessThreshold = DefaultSuccessThreshold
	c.FailureThreshold = DefaultLivenessFailThreshold
	if key == Readiness.Field() {
		c.FailureThreshold = DefaultReadinessFailThreshold
	}
}

// DefaultCheck returns a check of type t with every default applied and no method.
func DefaultCheck(t ProbeType) *Check {
	c := &Check{}
	c.preset(t.Field())
	return c
}

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
