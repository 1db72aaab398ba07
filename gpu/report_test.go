package gpu

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestReportJSONAndTable(t *testing.T) {
	t.Parallel()
	m, devs := collectorNode(t)
	r := NewReport(m.Snapshot(), map[string][]string{devs[1].UUID: {"default/llm-0/server"}})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Up            bool   `json:"up"`
		DriverVersion string `json:"driver_version"`
		GPUs          []struct {
			Index   int    `json:"index"`
			UUID    string `json:"uuid"`
			Health  string `json:"health"`
			LastXID uint64 `json:"last_xid"`
			Reasons []struct {
				Code, Severity string
				XID            uint64
			} `json:"reasons"`
			XIDs       map[string]uint64 `json:"xids"`
			Containers []string          `json:"containers"`
			Readings   *struct {
				Temp  *uint32  `json:"temperature_celsius"`
				Power *float64 `json:"power_watts"`
			} `json:"readings"`
		} `json:"gpus"`
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	g0, g1 := back.GPUs[0], back.GPUs[1]
	if !back.Up || back.DriverVersion != "550.54.15" || len(back.GPUs) != 2 ||
		g0.Health != "degraded" || *g0.Readings.Temp != 41 || *g0.Readings.Power != 71.5 ||
		g1.Health != "unhealthy" || g1.LastXID != 79 || g1.XIDs["79"] != 2 || g1.XIDs["999"] != 1 ||
		len(g1.Reasons) == 0 || g1.Reasons[0].XID != 79 || g1.Reasons[0].Severity != "fatal" ||
		g1.Readings.Power != nil || strings.Join(g1.Containers, ",") != "default/llm-0/server" {
		t.Fatalf("report: %s", b)
	}
	var buf bytes.Buffer
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"HEALTH", devs[1].UUID, "unhealthy", "xid 79 (GPU_HAS_FALLEN_OFF_THE_BUS)",
		"41°C", "72W", "1024/81920 MiB", "hw_slowdown", "driver 550.54.15"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
