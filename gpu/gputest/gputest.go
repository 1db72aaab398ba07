// Package gputest is a node's GPUs without NVML, for tests: a gpu.Source whose XIDs
// come as events when a test says so, and whose resets show as NVML shows them, the
// volatile ECC counter dropping.
package gputest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/probe-agent/probe-agent/gpu"
)

// Node is n H100s.
type Node struct {
	mu     sync.Mutex
	devs   []gpu.Device
	ecc    []uint64
	events chan gpu.Event
}

// New returns a node of n healthy GPUs.
func New(n int) *Node {
	g := &Node{events: make(chan gpu.Event, 16)}
	for i := range n {
		g.devs = append(g.devs, gpu.Device{Index: i, Minor: i, Name: "NVIDIA H100 80GB HBM3",
			UUID: fmt.Sprintf("GPU-8a6f1e2c-0b3d-4c5e-9f70-%012d", i)})
		g.ecc = append(g.ecc, 5)
	}
	return g
}

// UUID is GPU i's UUID.
func (g *Node) UUID(i int) string { return g.devs[i].UUID }

// XID raises an XID on GPU i.
func (g *Node) XID(i int, xid uint64) {
	g.events <- gpu.Event{UUID: g.devs[i].UUID, Kind: gpu.EventXID, XID: xid, GI: gpu.NoInstance, CI: gpu.NoInstance, At: time.Now()}
}

// Reset makes GPU i look freshly reset: its volatile ECC counter drops.
func (g *Node) Reset(i int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ecc[i] = 0
}

// Devices implements gpu.Source.
func (g *Node) Devices() []gpu.Device { return g.devs }

// DriverVersion implements gpu.Source.
func (g *Node) DriverVersion() string { return "550.54.15" }

// Events implements gpu.Source.
func (g *Node) Events() <-chan gpu.Event { return g.events }

// Close implements gpu.Source.
func (g *Node) Close() error { return nil }

// Sample implements gpu.Source: every GPU cool, no recovery action, its ECC counter.
func (g *Node) Sample(context.Context) ([]gpu.Sample, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]gpu.Sample, len(g.devs))
	for i, d := range g.devs {
		out[i] = gpu.Sample{UUID: d.UUID, At: time.Now(), TempC: gpu.Some[uint32](40), ECCCorrVolatile: gpu.Some(g.ecc[i]),
			RecoveryAction: gpu.Some[uint32](0)}
	}
	return out, nil
}
