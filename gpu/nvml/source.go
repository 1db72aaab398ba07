//go:build linux && cgo && (no_dynamic_plugins || !amd64)

// The real NVML source (see doc.go for when it is built).

package nvml

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/probe-agent/probe-agent/gpu"
)

// InitError is a failed nvmlInit; after it no other NVML call is made, since calling
// into a library that did not load kills the process.
type InitError struct{ Ret gonvml.Return }

func (e *InitError) Error() string { return "nvml init: " + gonvml.ErrorString(e.Ret) }

// Unwrap makes errors.Is(err, gonvml.ERROR_LIBRARY_NOT_FOUND) work.
func (e *InitError) Unwrap() error { return e.Ret }

// NoDriver reports whether the node simply has no NVIDIA driver (a normal state, not
// a fault).
func (e *InitError) NoDriver() bool {
	return e.Ret == gonvml.ERROR_LIBRARY_NOT_FOUND || e.Ret == gonvml.ERROR_DRIVER_NOT_LOADED
}

// NoDriver reports whether err from Load means the node has no usable NVIDIA driver
// (a normal state on CPU nodes), as opposed to a driver that fails.
func NoDriver(err error) bool {
	var ie *InitError
	return errors.As(err, &ie) && ie.NoDriver()
}

// Options tune the source.
type Options struct {
	// PollTimeout bounds one Sample: NVML calls can block on a wedged GPU (default 5 s).
	PollTimeout time.Duration
	// WaitTimeout is how long one event wait lasts (default 1 s); Close takes at most
	// this long.
	WaitTimeout time.Duration
	// Retry is the pause before an event set is recreated after an error (default 1 s).
	Retry time.Duration
}

// Source is a gpu.Source backed by NVML.
type Source struct {
	lib     gonvml.Interface
	opts    Options
	devs    []gpu.Device
	handles []gonvml.Device
	driver  string
	clocks  func(gonvml.Device) (uint64, gonvml.Return)
	events  chan gpu.Event
	polling atomic.Bool
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

// Load opens the driver's library at path (libnvidia-ml.so.1 when empty).
func Load(path string, opts Options) (gpu.Source, error) {
	var lopts []gonvml.LibraryOption
	if path != "" {
		lopts = append(lopts, gonvml.WithLibraryPath(path))
	}
	return New(gonvml.New(lopts...), opts)
}

const wantedEvents = gonvml.EventTypeXidCriticalError | gonvml.EventTypeDoubleBitEccError |
	gonvml.EventTypeSingleBitEccError | gonvml.EventTypeGpuUnavailableError | gonvml.EventTypeGpuRecoveryAction

// New initialises NVML through lib, lists the GPUs and starts watching their events.
func New(lib gonvml.Interface, opts Options) (*Source, error) {
	if ret := lib.Init(); ret != gonvml.SUCCESS {
		return nil, &InitError{Ret: ret}
	}
	if opts.PollTimeout <= 0 {
		opts.PollTimeout = 5 * time.Second
	}
	if opts.WaitTimeout <= 0 {
		opts.WaitTimeout = time.Second
	}
	if opts.Retry <= 0 {
		opts.Retry = time.Second
	}
	s := &Source{lib: lib, opts: opts, events: make(chan gpu.Event, 64)}
	n, ret := lib.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		lib.Shutdown()
		return nil, fmt.Errorf("nvml: counting GPUs: %s", gonvml.ErrorString(ret))
	}
	for i := range n {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			lib.Shutdown()
			return nil, fmt.Errorf("nvml: GPU %d: %s", i, gonvml.ErrorString(ret))
		}
		d := gpu.Device{Index: i, Minor: -1}
		if d.UUID, ret = h.GetUUID(); ret != gonvml.SUCCESS {
			lib.Shutdown()
			return nil, fmt.Errorf("nvml: GPU %d UUID: %s", i, gonvml.ErrorString(ret))
		}
		d.Name, _ = h.GetName()
		if m, ret := h.GetMinorNumber(); ret == gonvml.SUCCESS {
			d.Minor = m
		}
		if pci, ret := h.GetPciInfo(); ret == gonvml.SUCCESS {
			d.PCIBusID = busID(pci)
		}
		if cur, _, ret := h.GetMigMode(); ret == gonvml.SUCCESS {
			d.MIG = cur == gonvml.DEVICE_MIG_ENABLE
		}
		if d.MIG {
			d.MIGDevices = migDevices(h)
		}
		s.devs = append(s.devs, d)
		s.handles = append(s.handles, h)
	}
	if v, ret := lib.SystemGetDriverVersion(); ret == gonvml.SUCCESS {
		s.driver = v
	}
	// Newer drivers renamed the clock throttle reasons; an unversioned symbol must be
	// looked up before it is called.
	s.clocks = func(h gonvml.Device) (uint64, gonvml.Return) { return h.GetCurrentClocksThrottleReasons() }
	if lib.Extensions().LookupSymbol("nvmlDeviceGetCurrentClocksEventReasons") == nil {
		s.clocks = func(h gonvml.Device) (uint64, gonvml.Return) { return h.GetCurrentClocksEventReasons() }
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done.Add(1)
	go s.watch(ctx)
	return s, nil
}

// migDevices lists a MIG-enabled GPU's slices; slots without one are skipped.
func migDevices(h gonvml.Device) []gpu.MIGDevice {
	n, ret := h.GetMaxMigDeviceCount()
	if ret != gonvml.SUCCESS {
		return nil
	}
	var out []gpu.MIGDevice
	for i := range n {
		m, ret := h.GetMigDeviceHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			continue
		}
		uuid, ret := m.GetUUID()
		if ret != gonvml.SUCCESS {
			continue
		}
		md := gpu.MIGDevice{UUID: uuid, GI: gpu.NoInstance, CI: gpu.NoInstance}
		if gi, ret := m.GetGpuInstanceId(); ret == gonvml.SUCCESS {
			md.GI = uint32(gi)
		}
		if ci, ret := m.GetComputeInstanceId(); ret == gonvml.SUCCESS {
			md.CI = uint32(ci)
		}
		out = append(out, md)
	}
	return out
}

func busID(p gonvml.PciInfo) string {
	b := make([]byte, 0, len(p.BusIdLegacy))
	for _, c := range p.BusIdLegacy {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// Devices returns the GPUs found at start.
func (s *Source) Devices() []gpu.Device { return s.devs }

// DriverVersion returns the driver's version, read at start.
func (s *Source) DriverVersion() string { return s.driver }

// Events returns GPU events; it is closed by Close.
func (s *Source) Events() <-chan gpu.Event { return s.events }

// Sample reads every GPU once. It returns gpu.ErrPollTimeout when the reads outlast
// PollTimeout, and while such a stuck poll has not returned, so that stuck calls do
// not pile up.
func (s *Source) Sample(ctx context.Context) ([]gpu.Sample, error) {
	if !s.polling.CompareAndSwap(false, true) {
		return nil, gpu.ErrPollTimeout
	}
	res := make(chan []gpu.Sample, 1)
	go func() {
		defer s.polling.Store(false)
		out := make([]gpu.Sample, len(s.handles))
		for i, h := range s.handles {
			out[i] = s.sample(h, s.devs[i].UUID)
		}
		res <- out
	}()
	t := time.NewTimer(s.opts.PollTimeout)
	defer t.Stop()
	select {
	case out := <-res:
		return out, nil
	case <-t.C:
		return nil, gpu.ErrPollTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// sample reads one GPU; every getter is independent, unsupported ones stay empty, and
// GPU_IS_LOST from any of them marks the GPU lost.
func (s *Source) sample(h gonvml.Device, uuid string) gpu.Sample {
	sm := gpu.Sample{UUID: uuid, At: time.Now()}
	ok := func(call string, ret gonvml.Return) bool {
		switch ret {
		case gonvml.SUCCESS:
			return true
		case gonvml.ERROR_NOT_SUPPORTED:
			return false
		case gonvml.ERROR_GPU_IS_LOST:
			sm.Lost = true
		}
		sm.Errors = append(sm.Errors, gpu.CallError{Call: call, Return: returnName(ret)})
		return false
	}
	if v, ret := h.GetTemperature(gonvml.TEMPERATURE_GPU); ok("GetTemperature", ret) {
		sm.TempC = gpu.Some(v)
	}
	if v, ret := h.GetTemperatureThreshold(gonvml.TEMPERATURE_THRESHOLD_SLOWDOWN); ok("GetTemperatureThreshold", ret) {
		sm.SlowdownTempC = gpu.Some(v)
	}
	if v, ret := h.GetTemperatureThreshold(gonvml.TEMPERATURE_THRESHOLD_SHUTDOWN); ok("GetTemperatureThreshold", ret) {
		sm.ShutdownTempC = gpu.Some(v)
	}
	if v, ret := h.GetPowerUsage(); ok("GetPowerUsage", ret) {
		sm.PowerMilliwatts = gpu.Some(v)
	}
	if v, ret := h.GetTotalEnergyConsumption(); ok("GetTotalEnergyConsumption", ret) {
		sm.EnergyMillijoules = gpu.Some(v)
	}
	if m, ret := h.GetMemoryInfo(); ok("GetMemoryInfo", ret) {
		sm.MemUsedBytes, sm.MemTotalBytes = gpu.Some(m.Used), gpu.Some(m.Total)
	}
	if u, ret := h.GetUtilizationRates(); ok("GetUtilizationRates", ret) {
		sm.UtilGPUPct, sm.UtilMemPct = gpu.Some(u.Gpu), gpu.Some(u.Memory)
	}
	for _, e := range []struct {
		t   gonvml.MemoryErrorType
		c   gonvml.EccCounterType
		dst *gpu.Opt[uint64]
	}{
		{gonvml.MEMORY_ERROR_TYPE_UNCORRECTED, gonvml.VOLATILE_ECC, &sm.ECCUncorrVolatile},
		{gonvml.MEMORY_ERROR_TYPE_CORRECTED, gonvml.VOLATILE_ECC, &sm.ECCCorrVolatile},
		{gonvml.MEMORY_ERROR_TYPE_UNCORRECTED, gonvml.AGGREGATE_ECC, &sm.ECCUncorrAggregate},
		{gonvml.MEMORY_ERROR_TYPE_CORRECTED, gonvml.AGGREGATE_ECC, &sm.ECCCorrAggregate},
	} {
		if v, ret := h.GetTotalEccErrors(e.t, e.c); ok("GetTotalEccErrors", ret) {
			*e.dst = gpu.Some(v)
		}
	}
	if corr, unc, pending, failed, ret := h.GetRemappedRows(); ok("GetRemappedRows", ret) {
		sm.RemappedRowsCorr, sm.RemappedRowsUnc = gpu.Some(corr), gpu.Some(unc)
		sm.RemapPending, sm.RemapFailed = gpu.Some(pending), gpu.Some(failed)
	}
	if v, ret := h.GetRetiredPagesPendingStatus(); ok("GetRetiredPagesPendingStatus", ret) {
		sm.RetiredPagesPending = gpu.Some(v == gonvml.FEATURE_ENABLED)
	}
	if v, ret := s.clocks(h); ok("GetCurrentClocksEventReasons", ret) {
		sm.ClockEventReasons = gpu.Some(v)
	}
	if v, ret := h.GetPcieReplayCounter(); ok("GetPcieReplayCounter", ret) && v >= 0 {
		sm.PCIeReplays = gpu.Some(uint64(v))
	}
	fv := []gonvml.FieldValue{{FieldId: gonvml.FI_DEV_GET_GPU_RECOVERY_ACTION}}
	if ok("GetFieldValues", h.GetFieldValues(fv)) && gonvml.Return(fv[0].NvmlReturn) == gonvml.SUCCESS {
		sm.RecoveryAction = gpu.Some(uint32(fv[0].Value[0]))
	}
	return sm
}

// watch follows NVML events until ctx ends, recreating the event set after errors.
func (s *Source) watch(ctx context.Context) {
	defer s.done.Done()
	defer close(s.events)
	for ctx.Err() == nil {
		set, ret := s.lib.EventSetCreate()
		if ret != gonvml.SUCCESS {
			s.pause(ctx)
			continue
		}
		for _, h := range s.handles {
			mask := uint64(wantedEvents)
			if sup, ret := h.GetSupportedEventTypes(); ret == gonvml.SUCCESS {
				mask &= sup
			}
			if mask != 0 {
				_ = h.RegisterEvents(mask, set) // NOT_SUPPORTED leaves the set usable
			}
		}
		s.follow(ctx, set)
		set.Free()
		s.pause(ctx)
	}
}

// follow waits for events on one set until an error other than a timeout.
func (s *Source) follow(ctx context.Context, set gonvml.EventSet) {
	for ctx.Err() == nil {
		data, ret := set.Wait(uint32(s.opts.WaitTimeout / time.Millisecond))
		switch ret {
		case gonvml.SUCCESS:
			s.emit(ctx, s.event(data))
		case gonvml.ERROR_TIMEOUT:
		case gonvml.ERROR_GPU_IS_LOST:
			for _, d := range s.devs {
				s.emit(ctx, gpu.Event{UUID: d.UUID, Kind: gpu.EventLost, GI: gpu.NoInstance, CI: gpu.NoInstance, At: time.Now()})
			}
			return
		default:
			return
		}
	}
}

func (s *Source) event(d gonvml.EventData) gpu.Event {
	e := gpu.Event{GI: d.GpuInstanceId, CI: d.ComputeInstanceId, At: time.Now()}
	if d.Device != nil {
		e.UUID, _ = d.Device.GetUUID()
	}
	switch {
	case d.EventType&gonvml.EventTypeXidCriticalError != 0:
		e.Kind, e.XID = gpu.EventXID, d.EventData
	case d.EventType&gonvml.EventTypeDoubleBitEccError != 0:
		e.Kind = gpu.EventDBE
	case d.EventType&gonvml.EventTypeSingleBitEccError != 0:
		e.Kind = gpu.EventSBE
	case d.EventType&gonvml.EventTypeGpuUnavailableError != 0:
		e.Kind = gpu.EventUnavailable
	default:
		e.Kind = gpu.EventRecoveryAction
	}
	return e
}

func (s *Source) emit(ctx context.Context, e gpu.Event) {
	select {
	case s.events <- e:
	case <-ctx.Done():
	}
}

func (s *Source) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(s.opts.Retry):
	}
}

// Close stops watching and shuts NVML down.
func (s *Source) Close() error {
	s.cancel()
	s.done.Wait()
	if ret := s.lib.Shutdown(); ret != gonvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %s", gonvml.ErrorString(ret))
	}
	return nil
}

// returnName is the NVML constant's name of ret, stable whatever the loaded library's
// nvmlErrorString says, for metric labels.
func returnName(ret gonvml.Return) string {
	if n, ok := returnNames[ret]; ok {
		return n
	}
	return fmt.Sprintf("ERROR_%d", int32(ret))
}

var returnNames = map[gonvml.Return]string{
	gonvml.ERROR_UNINITIALIZED:           "ERROR_UNINITIALIZED",
	gonvml.ERROR_INVALID_ARGUMENT:        "ERROR_INVALID_ARGUMENT",
	gonvml.ERROR_NO_PERMISSION:           "ERROR_NO_PERMISSION",
	gonvml.ERROR_INSUFFICIENT_POWER:      "ERROR_INSUFFICIENT_POWER",
	gonvml.ERROR_TIMEOUT:                 "ERROR_TIMEOUT",
	gonvml.ERROR_IRQ_ISSUE:               "ERROR_IRQ_ISSUE",
	gonvml.ERROR_LIBRARY_NOT_FOUND:       "ERROR_LIBRARY_NOT_FOUND",
	gonvml.ERROR_FUNCTION_NOT_FOUND:      "ERROR_FUNCTION_NOT_FOUND",
	gonvml.ERROR_CORRUPTED_INFOROM:       "ERROR_CORRUPTED_INFOROM",
	gonvml.ERROR_GPU_IS_LOST:             "ERROR_GPU_IS_LOST",
	gonvml.ERROR_RESET_REQUIRED:          "ERROR_RESET_REQUIRED",
	gonvml.ERROR_OPERATING_SYSTEM:        "ERROR_OPERATING_SYSTEM",
	gonvml.ERROR_LIB_RM_VERSION_MISMATCH: "ERROR_LIB_RM_VERSION_MISMATCH",
	gonvml.ERROR_IN_USE:                  "ERROR_IN_USE",
	gonvml.ERROR_MEMORY:                  "ERROR_MEMORY",
	gonvml.ERROR_NO_DATA:                 "ERROR_NO_DATA",
	gonvml.ERROR_INSUFFICIENT_RESOURCES:  "ERROR_INSUFFICIENT_RESOURCES",
	gonvml.ERROR_UNKNOWN:                 "ERROR_UNKNOWN",
}
