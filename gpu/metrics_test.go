package gpu

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollectorWithoutMonitor(t *testing.T) {
	t.Parallel()
	c := NewCollector(nil, nil)
	want := `
# HELP probe_agent_gpu_monitoring_up 1 when NVML is initialised and the last GPU poll worked, 0 otherwise.
# TYPE probe_agent_gpu_monitoring_up gauge
probe_agent_gpu_monitoring_up 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c); n != 1 {
		t.Fatalf("%d series without a monitor, want 1", n)
	}
}

// collectorNode is a two-GPU node: GPU 0 healthy and fully read, GPU 1 after XID 79
// with most readings unsupported.
func collectorNode(t *testing.T) (*Monitor, []Device) {
	t.Helper()
	devs := node()[:2]
	devs[1].MIG = true
	devs[0].PCIBusID, devs[1].PCIBusID = "00000000:07:00.0", "00000000:0F:00.0"
	src := &fakeSource{devs: devs, events: make(chan Event, 4), samples: []Sample{{
		UUID: devs[0].UUID, TempC: Some[uint32](41), SlowdownTempC: Some[uint32](87), ShutdownTempC: Some[uint32](92),
		PowerMilliwatts: Some[uint32](71500), EnergyMillijoules: Some[uint64](9_000_000),
		MemUsedBytes: Some[uint64](1 << 30), MemTotalBytes: Some[uint64](80 << 30),
		UtilGPUPct: Some[uint32](30), UtilMemPct: Some[uint32](10),
		ECCUncorrVolatile: Some[uint64](0), ECCCorrVolatile: Some[uint64](2),
		ECCUncorrAggregate: Some[uint64](1), ECCCorrAggregate: Some[uint64](7),
		RemappedRowsCorr: Some(3), RemappedRowsUnc: Some(0), RemapPending: Some(false), RemapFailed: Some(false),
		RetiredPagesPending: Some(false), ClockEventReasons: Some[uint64](0x4 | 0x40), PCIeReplays: Some[uint64](5),
		RecoveryAction: Some[uint32](0),
	}, {
		UUID: devs[1].UUID, TempC: Some[uint32](50),
		Errors: []CallError{{Call: "GetPowerUsage", Return: "ERROR_UNKNOWN"}},
	}}}
	m := NewMonitor(src, DefaultPolicy(), 0, nil)
	m.Poll(context.Background())
	m.event(Event{UUID: devs[1].UUID, Kind: EventXID, XID: 79, GI: NoInstance, CI: NoInstance})
	m.event(Event{UUID: devs[1].UUID, Kind: EventXID, XID: 13, GI: NoInstance, CI: NoInstance})
	m.event(Event{UUID: devs[1].UUID, Kind: EventXID, XID: 999, GI: NoInstance, CI: NoInstance})
	m.event(Event{UUID: devs[1].UUID, Kind: EventXID, XID: 79, GI: NoInstance, CI: NoInstance})
	m.Poll(context.Background())
	return m, devs
}

func TestCollectorExportsEverySampleReading(t *testing.T) {
	t.Parallel()
	m, devs := collectorNode(t)
	c := NewCollector(m, func() []ContainerGPUs {
		return []ContainerGPUs{
			{Namespace: "default", Pod: "llm-0", Container: "server", GPUs: devs[1:2], Healthy: false},
			{Container: "cpu-only"},
		}
	})
	u0, u1 := devs[0].UUID, devs[1].UUID
	want := strings.NewReplacer("U0", u0, "U1", u1).Replace(`
# HELP probe_agent_container_gpu_healthy 1 when none of the container's GPUs is unhealthy, 0 otherwise.
# TYPE probe_agent_container_gpu_healthy gauge
probe_agent_container_gpu_healthy{container="server",namespace="default",pod="llm-0"} 0
# HELP probe_agent_container_gpu_info A GPU the container uses; always 1. Join GPU series on uuid.
# TYPE probe_agent_container_gpu_info gauge
probe_agent_container_gpu_info{container="server",gpu="1",namespace="default",pod="llm-0",uuid="U1"} 1
# HELP probe_agent_gpu_clock_event_active 1 while the clock is reduced for the reason.
# TYPE probe_agent_gpu_clock_event_active gauge
probe_agent_gpu_clock_event_active{gpu="0",reason="hw_power_brake",uuid="U0"} 0
probe_agent_gpu_clock_event_active{gpu="0",reason="hw_slowdown",uuid="U0"} 0
probe_agent_gpu_clock_event_active{gpu="0",reason="hw_thermal_slowdown",uuid="U0"} 1
probe_agent_gpu_clock_event_active{gpu="0",reason="sw_power_cap",uuid="U0"} 1
probe_agent_gpu_clock_event_active{gpu="0",reason="sw_thermal_slowdown",uuid="U0"} 0
# HELP probe_agent_gpu_ecc_errors_total ECC errors the GPU counted, by error (corrected, uncorrected) and counter (volatile: since the last reset; aggregate: lifetime).
# TYPE probe_agent_gpu_ecc_errors_total counter
probe_agent_gpu_ecc_errors_total{counter="aggregate",error="corrected",gpu="0",uuid="U0"} 7
probe_agent_gpu_ecc_errors_total{counter="aggregate",error="uncorrected",gpu="0",uuid="U0"} 1
probe_agent_gpu_ecc_errors_total{counter="volatile",error="corrected",gpu="0",uuid="U0"} 2
probe_agent_gpu_ecc_errors_total{counter="volatile",error="uncorrected",gpu="0",uuid="U0"} 0
# HELP probe_agent_gpu_energy_joules_total Energy the GPU consumed since the driver loaded.
# TYPE probe_agent_gpu_energy_joules_total counter
probe_agent_gpu_energy_joules_total{gpu="0",uuid="U0"} 9000
# HELP probe_agent_gpu_health_state 1 for the GPU's current health state (healthy, degraded, unhealthy, unknown), 0 for the others.
# TYPE probe_agent_gpu_health_state gauge
probe_agent_gpu_health_state{gpu="0",state="degraded",uuid="U0"} 1
probe_agent_gpu_health_state{gpu="0",state="healthy",uuid="U0"} 0
probe_agent_gpu_health_state{gpu="0",state="unhealthy",uuid="U0"} 0
probe_agent_gpu_health_state{gpu="0",state="unknown",uuid="U0"} 0
probe_agent_gpu_health_state{gpu="1",state="degraded",uuid="U1"} 0
probe_agent_gpu_health_state{gpu="1",state="healthy",uuid="U1"} 0
probe_agent_gpu_health_state{gpu="1",state="unhealthy",uuid="U1"} 1
probe_agent_gpu_health_state{gpu="1",state="unknown",uuid="U1"} 0
# HELP probe_agent_gpu_info GPU inventory; always 1.
# TYPE probe_agent_gpu_info gauge
probe_agent_gpu_info{driver_version="550.54.15",gpu="0",mig_mode="disabled",minor="7",name="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:07:00.0",uuid="U0"} 1
probe_agent_gpu_info{driver_version="550.54.15",gpu="1",mig_mode="enabled",minor="6",name="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:0F:00.0",uuid="U1"} 1
# HELP probe_agent_gpu_last_xid The latest XID seen on the GPU since the agent started; 0 for none.
# TYPE probe_agent_gpu_last_xid gauge
probe_agent_gpu_last_xid{gpu="0",uuid="U0"} 0
probe_agent_gpu_last_xid{gpu="1",uuid="U1"} 79
# HELP probe_agent_gpu_memory_total_bytes GPU framebuffer memory size.
# TYPE probe_agent_gpu_memory_total_bytes gauge
probe_agent_gpu_memory_total_bytes{gpu="0",uuid="U0"} 8.589934592e+10
# HELP probe_agent_gpu_memory_used_bytes GPU framebuffer memory in use.
# TYPE probe_agent_gpu_memory_used_bytes gauge
probe_agent_gpu_memory_used_bytes{gpu="0",uuid="U0"} 1.073741824e+09
# HELP probe_agent_gpu_memory_utilization_ratio Fraction of the last sample period memory was read or written (0-1).
# TYPE probe_agent_gpu_memory_utilization_ratio gauge
probe_agent_gpu_memory_utilization_ratio{gpu="0",uuid="U0"} 0.1
# HELP probe_agent_gpu_monitoring_up 1 when NVML is initialised and the last GPU poll worked, 0 otherwise.
# TYPE probe_agent_gpu_monitoring_up gauge
probe_agent_gpu_monitoring_up 1
# HELP probe_agent_gpu_nvml_errors_total NVML calls that failed, by call and returned error.
# TYPE probe_agent_gpu_nvml_errors_total counter
probe_agent_gpu_nvml_errors_total{call="GetPowerUsage",return="ERROR_UNKNOWN"} 2
# HELP probe_agent_gpu_pcie_replays_total PCIe replays the GPU counted.
# TYPE probe_agent_gpu_pcie_replays_total counter
probe_agent_gpu_pcie_replays_total{gpu="0",uuid="U0"} 5
# HELP probe_agent_gpu_power_watts GPU power draw.
# TYPE probe_agent_gpu_power_watts gauge
probe_agent_gpu_power_watts{gpu="0",uuid="U0"} 71.5
# HELP probe_agent_gpu_recovery_action The driver's requested recovery action (0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset).
# TYPE probe_agent_gpu_recovery_action gauge
probe_agent_gpu_recovery_action{gpu="0",uuid="U0"} 0
# HELP probe_agent_gpu_remapped_rows Memory rows remapped, by cause (correctable, uncorrectable).
# TYPE probe_agent_gpu_remapped_rows gauge
probe_agent_gpu_remapped_rows{cause="correctable",gpu="0",uuid="U0"} 3
probe_agent_gpu_remapped_rows{cause="uncorrectable",gpu="0",uuid="U0"} 0
# HELP probe_agent_gpu_retired_pages_pending 1 when a page retirement waits for a driver reload.
# TYPE probe_agent_gpu_retired_pages_pending gauge
probe_agent_gpu_retired_pages_pending{gpu="0",uuid="U0"} 0
# HELP probe_agent_gpu_row_remap_failed 1 when a row remap failed; the GPU needs service.
# TYPE probe_agent_gpu_row_remap_failed gauge
probe_agent_gpu_row_remap_failed{gpu="0",uuid="U0"} 0
# HELP probe_agent_gpu_row_remap_pending 1 when a row remap waits for the next GPU reset.
# TYPE probe_agent_gpu_row_remap_pending gauge
probe_agent_gpu_row_remap_pending{gpu="0",uuid="U0"} 0
# HELP probe_agent_gpu_temperature_celsius GPU core temperature.
# TYPE probe_agent_gpu_temperature_celsius gauge
probe_agent_gpu_temperature_celsius{gpu="0",uuid="U0"} 41
probe_agent_gpu_temperature_celsius{gpu="1",uuid="U1"} 50
# HELP probe_agent_gpu_temperature_threshold_celsius Temperature at which the GPU slows down or shuts down.
# TYPE probe_agent_gpu_temperature_threshold_celsius gauge
probe_agent_gpu_temperature_threshold_celsius{gpu="0",threshold="shutdown",uuid="U0"} 92
probe_agent_gpu_temperature_threshold_celsius{gpu="0",threshold="slowdown",uuid="U0"} 87
# HELP probe_agent_gpu_utilization_ratio Fraction of the last sample period a kernel ran on the GPU (0-1).
# TYPE probe_agent_gpu_utilization_ratio gauge
probe_agent_gpu_utilization_ratio{gpu="0",uuid="U0"} 0.3
# HELP probe_agent_gpu_xid_errors_total XID events seen since the agent started, by XID (known numbers; others as "other").
# TYPE probe_agent_gpu_xid_errors_total counter
XIDS`)
	// Every known XID's series, and other's, exists on every GPU from the start.
	var xids strings.Builder
	seen := map[string]float64{"1/13": 1, "1/79": 2, "1/other": 1}
	for _, d := range devs {
		for _, x := range append(slices.Collect(maps.Keys(xidNames)), 0) {
			name := strconv.FormatUint(x, 10)
			if x == 0 {
				name = "other"
			}
			fmt.Fprintf(&xids, "probe_agent_gpu_xid_errors_total{gpu=\"%d\",uuid=\"%s\",xid=\"%s\"} %g\n", d.Index, d.UUID, name, seen[fmt.Sprint(d.Index, "/", name)])
		}
	}
	want = strings.Replace(want, "XIDS", xids.String(), 1)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// Registering checks the descriptions against what is collected.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}
