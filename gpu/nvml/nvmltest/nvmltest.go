//go:build linux && cgo && (no_dynamic_plugins || !amd64)

// Package nvmltest is a mocked NVIDIA node for tests: go-nvml's own DGX A100 mock with
// every getter the agent calls wired healthy, and event sets the test drives.
package nvmltest

import (
	"sync/atomic"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// Node is a mocked 8-GPU DGX A100 (driver 550.54.15). Server is the nvml.Interface to
// hand to gpu/nvml.New; its devices may be rewired further.
type Node struct {
	Server  *server.Server
	events  chan gonvml.EventData
	waitErr atomic.Int32 // a Return to give once, 0 for none
	sets    atomic.Int32
	eccCorr [8]atomic.Uint64
}

// NewNode returns a healthy node: 41 °C, 71 W, no ECC errors, nothing pending, no
// clock events, recovery action none.
func NewNode() *Node {
	n := &Node{Server: dgxa100.New(), events: make(chan gonvml.EventData, 16)}
	n.Server.EventSetCreateFunc = func() (gonvml.EventSet, gonvml.Return) {
		n.sets.Add(1)
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (gonvml.EventData, gonvml.Return) {
				if r := n.waitErr.Swap(0); r != 0 {
					return gonvml.EventData{}, gonvml.Return(r)
				}
				select {
				case e := <-n.events:
					return e, gonvml.SUCCESS
				case <-time.After(time.Duration(ms) * time.Millisecond):
					return gonvml.EventData{}, gonvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() gonvml.Return { return gonvml.SUCCESS },
		}, gonvml.SUCCESS
	}
	for i, d := range n.Server.Devices {
		md := d.(*server.Device)
		md.GetSupportedEventTypesFunc = func() (uint64, gonvml.Return) { return gonvml.EventTypeAll, gonvml.SUCCESS }
		md.RegisterEventsFunc = func(uint64, gonvml.EventSet) gonvml.Return { return gonvml.SUCCESS }
		md.GetTemperatureFunc = func(gonvml.TemperatureSensors) (uint32, gonvml.Return) { return 41, gonvml.SUCCESS }
		md.GetTemperatureThresholdFunc = func(t gonvml.TemperatureThresholds) (uint32, gonvml.Return) {
			if t == gonvml.TEMPERATURE_THRESHOLD_SLOWDOWN {
				return 87, gonvml.SUCCESS
			}
			return 92, gonvml.SUCCESS
		}
		md.GetPowerUsageFunc = func() (uint32, gonvml.Return) { return 71_000, gonvml.SUCCESS }
		md.GetTotalEnergyConsumptionFunc = func() (uint64, gonvml.Return) { return 9_000_000, gonvml.SUCCESS }
		md.GetPcieReplayCounterFunc = func() (int, gonvml.Return) { return 0, gonvml.SUCCESS }
		md.GetUtilizationRatesFunc = func() (gonvml.Utilization, gonvml.Return) {
			return gonvml.Utilization{Gpu: 30, Memory: 10}, gonvml.SUCCESS
		}
		md.GetTotalEccErrorsFunc = func(t gonvml.MemoryErrorType, c gonvml.EccCounterType) (uint64, gonvml.Return) {
			if t == gonvml.MEMORY_ERROR_TYPE_CORRECTED && c == gonvml.VOLATILE_ECC {
				return n.eccCorr[i].Load(), gonvml.SUCCESS
			}
			return 0, gonvml.SUCCESS
		}
		md.GetRemappedRowsFunc = func() (int, int, bool, bool, gonvml.Return) { return 0, 0, false, false, gonvml.SUCCESS }
		md.GetRetiredPagesPendingStatusFunc = func() (gonvml.EnableState, gonvml.Return) {
			return gonvml.FEATURE_DISABLED, gonvml.ERROR_NOT_SUPPORTED
		}
		md.GetCurrentClocksEventReasonsFunc = func() (uint64, gonvml.Return) { return 0, gonvml.SUCCESS }
		md.GetCurrentClocksThrottleReasonsFunc = func() (uint64, gonvml.Return) { return 0x40, gonvml.SUCCESS }
		md.GetFieldValuesFunc = func(v []gonvml.FieldValue) gonvml.Return {
			for i := range v {
				v[i].NvmlReturn = uint32(gonvml.SUCCESS)
			}
			return gonvml.SUCCESS
		}
	}
	return n
}

// Device returns the mock device at NVML index i.
func (n *Node) Device(i int) *server.Device { return n.Server.Devices[i].(*server.Device) }

// UUID returns the UUID of the GPU at NVML index i.
func (n *Node) UUID(i int) string {
	u, _ := n.Device(i).GetUUID()
	return u
}

// Event delivers an event to the next Wait of the current event set.
func (n *Node) Event(e gonvml.EventData) { n.events <- e }

// XID delivers a critical XID event for the whole GPU at index i.
func (n *Node) XID(i int, xid uint64) {
	n.Event(gonvml.EventData{Device: n.Device(i), EventType: gonvml.EventTypeXidCriticalError, EventData: xid,
		GpuInstanceId: 0xFFFFFFFF, ComputeInstanceId: 0xFFFFFFFF})
}

// FailWait makes the next Wait return ret.
func (n *Node) FailWait(ret gonvml.Return) { n.waitErr.Store(int32(ret)) }

// EventSets counts the event sets created so far.
func (n *Node) EventSets() int { return int(n.sets.Load()) }

// SetVolatileCorrectedECC sets the GPU's volatile corrected ECC count; dropping it is
// what a GPU reset looks like.
func (n *Node) SetVolatileCorrectedECC(i int, v uint64) { n.eccCorr[i].Store(v) }
