//go:build !linux || !cgo || (amd64 && !no_dynamic_plugins)

// Package nvml reads GPU health from the NVIDIA driver through go-nvml. This build
// leaves NVML out, so GPU monitoring is unavailable: it has no cgo, or it is a linux/amd64
// build without the no_dynamic_plugins tag.
//
// Why the tag: go-nvml leaves NVML's symbols unresolved until libnvidia-ml is opened at
// run time. On linux/amd64 the containerd client links Go's plugin package, which makes
// the linker bind every symbol at program start (-z now), so a binary with both would
// die before main with "undefined symbol: nvml…", GPU or not. The tag drops
// containerd's plugin loader; the Makefile and deploy/Dockerfile set it. Without it the
// agent still builds and runs, and says that GPU monitoring was not built in.
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
