//go:build linux && cgo && (no_dynamic_plugins || !amd64)

package nvml

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/probe-agent/probe-agent/gpu"
)

var uuidPattern = regexp.MustCompile(`^GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$`)

// TestRealGPU checks the NVML source against the node's real driver; it is skipped
// where no driver can be loaded (every CI machine). With PROBE_AGENT_GPU_REPORT set it
// writes the agent's GPU report there, to compare with nvidia-smi's view.
func TestRealGPU(t *testing.T) {
	path := LibraryPath(os.Getenv("NVIDIA_DRIVER_ROOT"))
	lib := gonvml.New(gonvml.WithLibraryPath(path))
	if ret := lib.Init(); ret != gonvml.SUCCESS {
		t.Skipf("no usable NVIDIA driver here (%s: %v)", path, ret)
	}
	defer lib.Shutdown()
	driver, ret := lib.SystemGetDriverVersion()
	t.Logf("driver %s (%v), library %s", driver, ret, path)
	for _, sym := range []string{"nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetFieldValues"} {
		t.Logf("LookupSymbol(%s): %v", sym, lib.Extensions().LookupSymbol(sym))
	}
	n, ret := lib.DeviceGetCount()
	if ret != gonvml.SUCCESS || n < 1 {
		t.Fatalf("DeviceGetCount: %d %v", n, ret)
	}
	for i := range n {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			t.Fatalf("GPU %d: %v", i, ret)
		}
		uuid, _ := h.GetUUID()
		name, _ := h.GetName()
		minor, ret := h.GetMinorNumber()
		t.Logf("GPU %d: %s %s minor %d (%v)", i, uuid, name, minor, ret)
		if !uuidPattern.MatchString(uuid) {
			t.Errorf("GPU %d: UUID %q", i, uuid)
		}
		if want := os.Getenv("PROBE_AGENT_EXPECT_GPU_NAME"); want != "" && !strings.Contains(name, want) {
			t.Errorf("GPU %d: name %q lacks %q", i, name, want)
		}
		if _, err := os.Stat(fmt.Sprintf("/dev/nvidia%d", minor)); ret == gonvml.SUCCESS && err != nil {
			t.Errorf("GPU %d: minor %d has no device node: %v", i, minor, err)
		}
		check := func(what string, ret gonvml.Return, v any) {
			t.Logf("GPU %d %s: %v (%v)", i, what, v, ret)
			if ret != gonvml.SUCCESS && ret != gonvml.ERROR_NOT_SUPPORTED {
				t.Errorf("GPU %d %s: %v", i, what, ret)
			}
		}
		temp, ret := h.GetTemperature(gonvml.TEMPERATURE_GPU)
		check("temperature", ret, temp)
		if ret == gonvml.SUCCESS && (temp < 15 || temp > 95) {
			t.Errorf("GPU %d: temperature %d °C out of range", i, temp)
		}
		power, ret := h.GetPowerUsage()
		check("power mW", ret, power)
		if ret == gonvml.SUCCESS && power == 0 {
			t.Errorf("GPU %d: no power draw", i)
		}
		mem, ret := h.GetMemoryInfo()
		check("memory", ret, mem)
		if strings.Contains(name, "H100") && (mem.Total < 70<<30 || mem.Total > 100<<30) {
			t.Errorf("GPU %d: %d bytes of memory on an H100", i, mem.Total)
		}
		corr, unc, pending, failed, ret := h.GetRemappedRows()
		check("remapped rows (corr, unc, pending, failed)", ret, []any{corr, unc, pending, failed})
		ecc, ret := h.GetTotalEccErrors(gonvml.MEMORY_ERROR_TYPE_UNCORRECTED, gonvml.VOLATILE_ECC)
		check("uncorrected volatile ECC", ret, ecc)
		replays, ret := h.GetPcieReplayCounter()
		check("PCIe replays", ret, replays)
		energy, ret := h.GetTotalEnergyConsumption()
		check("energy mJ", ret, energy)
		fv := []gonvml.FieldValue{{FieldId: gonvml.FI_DEV_GET_GPU_RECOVERY_ACTION}}
		ret = h.GetFieldValues(fv)
		check("recovery action", ret, fmt.Sprintf("value %d, field return %v", fv[0].Value[0], gonvml.Return(fv[0].NvmlReturn)))
		if ret == gonvml.SUCCESS && gonvml.Return(fv[0].NvmlReturn) == gonvml.SUCCESS && fv[0].Value[0] != 0 {
			t.Errorf("GPU %d: the driver asks for recovery action %d", i, fv[0].Value[0])
		}
		sup, ret := h.GetSupportedEventTypes()
		check("supported events", ret, fmt.Sprintf("%#x", sup))
		if sup&gonvml.EventTypeXidCriticalError == 0 {
			t.Errorf("GPU %d: XID events not supported", i)
		}
		set, ret := lib.EventSetCreate()
		if ret != gonvml.SUCCESS {
			t.Fatalf("EventSetCreate: %v", ret)
		}
		if ret := h.RegisterEvents(uint64(wantedEvents)&sup, set); ret != gonvml.SUCCESS {
			t.Errorf("GPU %d RegisterEvents: %v", i, ret)
		}
		start := time.Now()
		_, ret = set.Wait(1000)
		waited := time.Since(start)
		t.Logf("GPU %d Wait(1000): %v after %v", i, ret, waited)
		if ret != gonvml.ERROR_TIMEOUT || waited < 900*time.Millisecond || waited > 3*time.Second {
			t.Errorf("GPU %d Wait(1000): %v after %v, want a timeout after about 1 s", i, ret, waited)
		}
		set.Free()
	}

	// The agent's own source and verdict on the same driver.
	src, err := New(gonvml.New(gonvml.WithLibraryPath(path)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	mon := gpu.NewMonitor(src, gpu.DefaultPolicy(), time.Hour, nil)
	mon.Poll(context.Background())
	snap := mon.Snapshot()
	if !snap.Up || len(snap.GPUs) != n {
		t.Fatalf("snapshot: up %v, %d GPUs", snap.Up, len(snap.GPUs))
	}
	for _, st := range snap.GPUs {
		t.Logf("GPU %d verdict %s %s", st.Device.Index, st.Verdict.State, st.Verdict.Codes())
		if st.Verdict.State == gpu.Unhealthy || st.Verdict.State == gpu.Unknown {
			t.Errorf("GPU %d: %s (%s)", st.Device.Index, st.Verdict.State, st.Verdict.Codes())
		}
	}
	b, _ := json.MarshalIndent(gpu.NewReport(snap, nil), "", "  ")
	t.Logf("report:\n%s", b)
	if out := os.Getenv("PROBE_AGENT_GPU_REPORT"); out != "" {
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
