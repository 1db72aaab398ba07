package e2e

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/probe-agent/probe-agent/gpu"
)

// fakeGPUs is a node's GPUs as NVML would report them: XIDs come as events, and a
// GPU reset shows as its volatile ECC counter dropping.
type fakeGPUs struct {
	mu     sync.Mutex
	devs   []gpu.Device
	ecc    []uint64
	events chan gpu.Event
}

func newFakeGPUs() *fakeGPUs {
	g := &fakeGPUs{events: make(chan gpu.Event, 16)}
	for i := range 4 {
		g.devs = append(g.devs, gpu.Device{Index: i, Minor: i, Name: "NVIDIA H100 80GB HBM3",
			UUID: fmt.Sprintf("GPU-5c1d0e2a-7b3d-4c5e-9f70-%012d", i)})
		g.ecc = append(g.ecc, 5)
	}
	return g
}

func (g *fakeGPUs) xid(i int, xid uint64) {
	g.events <- gpu.Event{UUID: g.devs[i].UUID, Kind: gpu.EventXID, XID: xid, GI: gpu.NoInstance, CI: gpu.NoInstance, At: time.Now()}
}

func (g *fakeGPUs) reset(i int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ecc[i] = 0
}

func (g *fakeGPUs) Devices() []gpu.Device    { return g.devs }
func (g *fakeGPUs) DriverVersion() string    { return "580.65.06" }
func (g *fakeGPUs) Events() <-chan gpu.Event { return g.events }
func (g *fakeGPUs) Close() error             { return nil }
func (g *fakeGPUs) Sample(context.Context) ([]gpu.Sample, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]gpu.Sample, len(g.devs))
	for i, d := range g.devs {
		out[i] = gpu.Sample{UUID: d.UUID, At: time.Now(), TempC: gpu.Some[uint32](40), ECCCorrVolatile: gpu.Some(g.ecc[i]),
			RecoveryAction: gpu.Some[uint32](0)}
	}
	return out, nil
}
