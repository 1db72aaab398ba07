// Package gpu reports GPU health beside probe outcomes: device and sample types, the
// XID table and policy, the health verdict (a pure function), and which GPUs a
// container uses, read from its OCI spec. gpu/nvml is the only package that talks to
// the driver; everything here builds without cgo.
package gpu

import (
	"context"
	"time"
)

// Device is one GPU as NVML enumerates it. Index (NVML's, PCI order), CUDA ordinal and
// the /dev/nvidiaN minor may all differ: never assume one from another.
type Device struct {
	Index    int    `json:"index"`
	Minor    int    `json:"minor"`
	UUID     string `json:"uuid"`
	Name     string `json:"name"`
	PCIBusID string `json:"pci_bus_id"`
	MIG      bool   `json:"mig"`
	// MIGDevices are the GPU's MIG slices when MIG is on.
	MIGDevices []MIGDevice `json:"mig_devices,omitempty"`
}

// MIGDevice is one MIG slice of a GPU: its UUID (MIG-…) and its GPU and compute
// instance IDs.
type MIGDevice struct {
	UUID string `json:"uuid"`
	GI   uint32 `json:"gpu_instance"`
	CI   uint32 `json:"compute_instance"`
}

// Opt is a reading that may be missing: OK is false when the GPU does not support it or
// the read failed.
type Opt[T any] struct {
	V  T
	OK bool
}

// Some returns a present reading.
func Some[T any](v T) Opt[T] { return Opt[T]{V: v, OK: true} }

// Sample is one poll of one GPU.
type Sample struct {
	UUID                                 string
	At                                   time.Time
	TempC, SlowdownTempC, ShutdownTempC  Opt[uint32]
	PowerMilliwatts                      Opt[uint32]
	EnergyMillijoules                    Opt[uint64]
	MemUsedBytes, MemTotalBytes          Opt[uint64]
	UtilGPUPct, UtilMemPct               Opt[uint32]
	ECCUncorrVolatile, ECCCorrVolatile   Opt[uint64]
	ECCUncorrAggregate, ECCCorrAggregate Opt[uint64]
	RemappedRowsCorr, RemappedRowsUnc    Opt[int]
	RemapPending, RemapFailed            Opt[bool]
	RetiredPagesPending                  Opt[bool]
	ClockEventReasons                    Opt[uint64]
	PCIeReplays                          Opt[uint64]
	RecoveryAction                       Opt[uint32]
	// Lost is set when any call said the GPU is lost (fallen off the bus).
	Lost bool
	// Errors are the calls of this poll that failed with something other than "not
	// supported", for self-monitoring.
	Errors []CallError
}

// CallError is one failed NVML call: the function and the error it returned
// (ERROR_UNKNOWN, ERROR_GPU_IS_LOST, …).
type CallError struct {
	Call   string
	Return string
}

// EventKind says what an NVML event reported.
type EventKind int

// The event kinds the agent listens for.
const (
	EventXID EventKind = iota
	EventDBE
	EventSBE
	EventRecoveryAction
	EventUnavailable
	EventLost
)

func (k EventKind) String() string {
	return [...]string{"xid", "double_bit_ecc", "single_bit_ecc", "recovery_action", "gpu_unavailable", "gpu_lost"}[k]
}

// Event is one NVML event on one GPU. GI and CI name the MIG instance, or are
// NoInstance when the event concerns the whole GPU.
type Event struct {
	UUID   string
	Kind   EventKind
	XID    uint64
	GI, CI uint32
	At     time.Time
}

// NoInstance is the GI/CI value of events that concern the whole GPU.
const NoInstance = 0xFFFFFFFF

// Source is what gpu/nvml implements and tests fake.
type Source interface {
	Devices() []Device
	// DriverVersion is the NVIDIA driver's version, or "" when unknown.
	DriverVersion() string
	Sample(ctx context.Context) ([]Sample, error)
	Events() <-chan Event
	Close() error
}
