//go:build !linux || !cgo || (amd64 && !no_dynamic_plugins)

// The build without NVML (see doc.go for when and why): GPU monitoring is unavailable.

package nvml

import (
	"errors"
	"time"

	"github.com/probe-agent/probe-agent/gpu"
)

// Options tune the source.
type Options struct {
	PollTimeout, WaitTimeout, Retry time.Duration
}

// Load always fails in this build.
func Load(string, Options) (gpu.Source, error) { return nil, ErrUnavailable }

// NoDriver reports whether err from Load means NVML cannot be used here; in this build
// it never can.
func NoDriver(err error) bool { return errors.Is(err, ErrUnavailable) }
