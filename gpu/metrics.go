package gpu

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// ContainerGPUs is what the collector reports of one container: the GPUs it uses and
// whether all of them are healthy enough to serve.
type ContainerGPUs struct {
	Namespace, Pod, Container string
	GPUs                      []Device
	Healthy                   bool
}

// Collector exports GPU health as Prometheus metrics from the monitor's latest state,
// as constant metrics: values the GPU counts itself become counters, and a GPU's
// series disappear with it. Per-container series go on two metrics only
// (probe_agent_container_gpu_info and probe_agent_container_gpu_healthy); users join
// GPU series to containers on uuid.
type Collector struct {
	mon        func() *Monitor
	containers func() []ContainerGPUs
}

// NewCollector returns a collector of mon, which may be nil when GPU monitoring is
// unavailable (only probe_agent_gpu_monitoring_up 0 is exported then). containers,
// when not nil, lists the containers that use GPUs.
func NewCollector(mon *Monitor, containers func() []ContainerGPUs) *Collector {
	return NewCollectorFunc(func() *Monitor { return mon }, containers)
}

// NewCollectorFunc is NewCollector for a monitor that may appear later: mon is asked
// at every scrape.
func NewCollectorFunc(mon func() *Monitor, containers func() []ContainerGPUs) *Collector {
	return &Collector{mon: mon, containers: containers}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("probe_agent_"+name, help, labels, nil)
}

var (
	gpuLabels = []string{"gpu", "uuid"}

	descUp   = desc("gpu_monitoring_up", "1 when NVML is initialised and the last GPU poll worked, 0 otherwise.")
	descInfo = desc("gpu_info", "GPU inventory; always 1.",
		"gpu", "uuid", "name", "pci_bus_id", "minor", "driver_version", "mig_mode")
	descTemp          = desc("gpu_temperature_celsius", "GPU core temperature.", gpuLabels...)
	descTempThreshold = desc("gpu_temperature_threshold_celsius", "Temperature at which the GPU slows down or shuts down.",
		"gpu", "uuid", "threshold")
	descPower       = desc("gpu_power_watts", "GPU power draw.", gpuLabels...)
	descEnergy      = desc("gpu_energy_joules_total", "Energy the GPU consumed since the driver loaded.", gpuLabels...)
	descMemUsed     = desc("gpu_memory_used_bytes", "GPU framebuffer memory in use.", gpuLabels...)
	descMemTotal    = desc("gpu_memory_total_bytes", "GPU framebuffer memory size.", gpuLabels...)
	descUtil        = desc("gpu_utilization_ratio", "Fraction of the last sample period a kernel ran on the GPU (0-1).", gpuLabels...)
	descMemUtil     = desc("gpu_memory_utilization_ratio", "Fraction of the last sample period memory was read or written (0-1).", gpuLabels...)
	descECC         = desc("gpu_ecc_errors_total", "ECC errors the GPU counted, by error (corrected, uncorrected) and counter (volatile: since the last reset; aggregate: lifetime).", "gpu", "uuid", "error", "counter")
	descRemapped    = desc("gpu_remapped_rows", "Memory rows remapped, by cause (correctable, uncorrectable).", "gpu", "uuid", "cause")
	descRemapPend   = desc("gpu_row_remap_pending", "1 when a row remap waits for the next GPU reset.", gpuLabels...)
	descRemapFail   = desc("gpu_row_remap_failed", "1 when a row remap failed; the GPU needs service.", gpuLabels...)
	descRetired     = desc("gpu_retired_pages_pending", "1 when a page retirement waits for a driver reload.", gpuLabels...)
	descClockEvent  = desc("gpu_clock_event_active", "1 while the clock is reduced for the reason.", "gpu", "uuid", "reason")
	descReplays     = desc("gpu_pcie_replays_total", "PCIe replays the GPU counted.", gpuLabels...)
	descXID         = desc("gpu_xid_errors_total", "XID events seen since the agent started, by XID (known numbers; others as \"other\").", "gpu", "uuid", "xid")
	descLastXID     = desc("gpu_last_xid", "The latest XID seen on the GPU since the agent started; 0 for none.", gpuLabels...)
	descRecovery    = desc("gpu_recovery_action", "The driver's requested recovery action (0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset).", gpuLabels...)
	descHealth      = desc("gpu_health_state", "1 for the GPU's current health state (healthy, degraded, unhealthy, unknown), 0 for the others.", "gpu", "uuid", "state")
	descNVMLErrors  = desc("gpu_nvml_errors_total", "NVML calls that failed, by call and returned error.", "call", "return")
	descCtrGPU      = desc("container_gpu_info", "A GPU the container uses; always 1. Join GPU series on uuid.", "namespace", "pod", "container", "gpu", "uuid")
	descCtrHealthy  = desc("container_gpu_healthy", "1 when none of the container's GPUs is unhealthy, 0 otherwise.", "namespace", "pod", "container")
	clockEventNames = []struct {
		bit    uint64
		reason string
	}{
		{0x4, "sw_power_cap"},
		{0x8, "hw_slowdown"},
		{0x20, "sw_thermal_slowdown"},
		{0x40, "hw_thermal_slowdown"},
		{0x80, "hw_power_brake"},
	}
	// xidLabels are the xid label values of the known XIDs.
	xidLabels = func() map[uint64]string {
		m := make(map[uint64]string, len(xidNames))
		for x := range xidNames {
			m[x] = strconv.FormatUint(x, 10)
		}
		return m
	}()
	allDescs = []*prometheus.Desc{descUp, descInfo, descTemp, descTempThreshold, descPower, descEnergy, descMemUsed,
		descMemTotal, descUtil, descMemUtil, descECC, descRemapped, descRemapPend, descRemapFail, descRetired,
		descClockEvent, descReplays, descXID, descLastXID, descRecovery, descHealth, descNVMLErrors, descCtrGPU, descCtrHealthy}
)

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect sends the latest state.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	mon := c.mon()
	if mon == nil {
		gauge(descUp, 0)
		return
	}
	snap := mon.Snapshot()
	gauge(descUp, b2f(snap.Up))
	for _, st := range snap.GPUs {
		d := st.Device
		idx := strconv.Itoa(d.Index)
		l := []string{idx, d.UUID}
		with := func(extra ...string) []string { return append(append([]string(nil), l...), extra...) }
		mig := "disabled"
		if d.MIG {
			mig = "enabled"
		}
		gauge(descInfo, 1, idx, d.UUID, d.Name, d.PCIBusID, strconv.Itoa(d.Minor), snap.DriverVersion, mig)
		for _, s := range []State{Healthy, Degraded, Unhealthy, Unknown} {
			gauge(descHealth, b2f(st.Verdict.State == s), with(s.String())...)
		}
		// Every known XID's series exists from the start, at 0, so that increase()
		// counts the first one.
		xids := make(map[string]uint64, len(xidLabels)+1)
		xids["other"] = 0
		for _, label := range xidLabels {
			xids[label] = 0
		}
		for x, n := range st.XIDs {
			label, known := xidLabels[x]
			if !known {
				label = "other"
			}
			xids[label] += n
		}
		for x, n := range xids {
			counter(descXID, float64(n), with(x)...)
		}
		gauge(descLastXID, float64(st.LastXID), l...)
		if st.Sample != nil {
			sampleMetrics(st.Sample, gauge, counter, l, with)
		}
	}
	for ce, n := range snap.NVMLErrors {
		counter(descNVMLErrors, float64(n), ce.Call, ce.Return)
	}
	if c.containers == nil {
		return
	}
	for _, ctr := range c.containers() {
		if len(ctr.GPUs) == 0 {
			continue
		}
		for _, d := range ctr.GPUs {
			gauge(descCtrGPU, 1, ctr.Namespace, ctr.Pod, ctr.Container, strconv.Itoa(d.Index), d.UUID)
		}
		gauge(descCtrHealthy, b2f(ctr.Healthy), ctr.Namespace, ctr.Pod, ctr.Container)
	}
}

// sampleMetrics sends the readings of one sample; readings the GPU did not give are
// left out rather than reported as zero.
func sampleMetrics(s *Sample, gauge, counter func(*prometheus.Desc, float64, ...string), l []string, with func(...string) []string) {
	u32 := func(d *prometheus.Desc, o Opt[uint32], scale float64, labels ...string) {
		if o.OK {
			gauge(d, float64(o.V)*scale, labels...)
		}
	}
	flag := func(d *prometheus.Desc, o Opt[bool]) {
		if o.OK {
			gauge(d, b2f(o.V), l...)
		}
	}
	u32(descTemp, s.TempC, 1, l...)
	u32(descTempThreshold, s.SlowdownTempC, 1, with("slowdown")...)
	u32(descTempThreshold, s.ShutdownTempC, 1, with("shutdown")...)
	u32(descPower, s.PowerMilliwatts, 1e-3, l...)
	u32(descUtil, s.UtilGPUPct, 0.01, l...)
	u32(descMemUtil, s.UtilMemPct, 0.01, l...)
	u32(descRecovery, s.RecoveryAction, 1, l...)
	if s.EnergyMillijoules.OK {
		counter(descEnergy, float64(s.EnergyMillijoules.V)/1e3, l...)
	}
	if s.MemUsedBytes.OK {
		gauge(descMemUsed, float64(s.MemUsedBytes.V), l...)
	}
	if s.MemTotalBytes.OK {
		gauge(descMemTotal, float64(s.MemTotalBytes.V), l...)
	}
	for _, e := range []struct {
		o              Opt[uint64]
		kind, lifetime string
	}{
		{s.ECCCorrVolatile, "corrected", "volatile"},
		{s.ECCUncorrVolatile, "uncorrected", "volatile"},
		{s.ECCCorrAggregate, "corrected", "aggregate"},
		{s.ECCUncorrAggregate, "uncorrected", "aggregate"},
	} {
		if e.o.OK {
			counter(descECC, float64(e.o.V), with(e.kind, e.lifetime)...)
		}
	}
	if s.RemappedRowsCorr.OK {
		gauge(descRemapped, float64(s.RemappedRowsCorr.V), with("correctable")...)
	}
	if s.RemappedRowsUnc.OK {
		gauge(descRemapped, float64(s.RemappedRowsUnc.V), with("uncorrectable")...)
	}
	flag(descRemapPend, s.RemapPending)
	flag(descRemapFail, s.RemapFailed)
	flag(descRetired, s.RetiredPagesPending)
	if s.ClockEventReasons.OK {
		for _, r := range clockEventNames {
			gauge(descClockEvent, b2f(s.ClockEventReasons.V&r.bit != 0), with(r.reason)...)
		}
	}
	if s.PCIeReplays.OK {
		counter(descReplays, float64(s.PCIeReplays.V), l...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
