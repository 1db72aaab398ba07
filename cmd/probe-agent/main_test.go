package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/nvml"
	"github.com/probe-agent/probe-agent/internal/await"
)

// asAgent, when set, makes the test binary the probe-agent command itself, so that tests
// can run the agent as a process of its own (and kill it).
const asAgent = "PROBE_AGENT_TEST_AS_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(asAgent) != "" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

func TestValidateFiveMistakesFiveLines(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"validate", "--config", "../../testdata/invalid-five.json"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 5:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "../../testdata/invalid-five.json: containers[0].") {
			t.Errorf("line without file and JSON path: %q", l)
		}
	}
}

func TestValidateGoodFiles(t *testing.T) {
	for _, f := range []string{"../../testdata/service.json", "../../testdata/eas-example.json"} {
		var out bytes.Buffer
		if code := run(context.Background(), []string{"validate", "--config", f}, &out, &out); code != 0 {
			t.Errorf("%s: exit %d: %s", f, code, out.String())
		}
	}
}

func TestValidateSyntaxErrorAndMissingFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{\n  \"metadata\": {,\n}"), 0o644)
	var out bytes.Buffer
	if code := run(context.Background(), []string{"validate", "--config", bad}, &out, &out); code != 1 ||
		!strings.Contains(out.String(), "invalid JSON at line 2") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"validate", "--config", filepath.Join(dir, "missing.json")}, &out, &out); code != 1 ||
		!strings.Contains(out.String(), "no such file") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"validate", "--config", "../../testdata/service.json", "--reserved-ports", "8000"}, &out, &out); code != 1 ||
		!strings.Contains(out.String(), "8000 is reserved") {
		t.Fatalf("--reserved-ports not applied: exit %d: %s", code, out.String())
	}
}

func TestValidateContainerdRuntimeRules(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "service.json")
	os.WriteFile(cfg, []byte(`{"metadata":{"name":"m"},"containers":[{"name":"ns/pod/app"},{"name":"model","rootfs":"/srv/rootfs"}]}`), 0o644)
	var out bytes.Buffer
	code := run(context.Background(), []string{"validate", "--config", cfg, "--runtime", "containerd"}, &out, &out)
	if code != 1 || !strings.Contains(out.String(), "containers[1].command: required with rootfs") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"validate", "--config", cfg}, &out, &out); code != 1 ||
		!strings.Contains(out.String(), "containers[0].command: required by the process runtime") {
		t.Fatalf("process runtime: exit %d: %s", code, out.String())
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "probe-agent ") {
		t.Fatalf("exit %d: %q", code, out.String())
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "--config is required"},
		{[]string{"run", "--config", "../../testdata/service.json", "--runtime", "docker"}, `--runtime: "docker"`},
		{[]string{"run", "--config", "../../testdata/service.json", "--log-format", "xml"}, "--log-format"},
		{[]string{"run", "--config", "../../testdata/service.json", "--log-level", "loud"}, "--log-level"},
		{[]string{"run", "--config", "../../testdata/service.json", "--listen", "256.0.0.1:1"}, "--listen"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"run", "--config", "../../testdata/service.json", "--exec-runner", "on"}, `--exec-runner: "on" is not auto or off`},
		{[]string{"run", "--config", "../../testdata/service.json", "--gpu", "maybe"}, `--gpu: "maybe" is not auto, on or off`},
		{[]string{"run", "--config", "../../testdata/service.json", "--gpu-xid-fatal", "79,x9"}, `"x9" is not an XID`},
		{[]string{"gpu", "--gpu-xid-ignore", "-13"}, `"-13" is not an XID`},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &out); code != 1 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%v: exit %d, output %q, want ...%s...", tc.args, code, out.String(), tc.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestRunServesStatusAndStopsCleanly runs the whole command with a real process and
// checks the HTTP interface, the JSON logs and a clean shutdown.
func TestRunServesStatusAndStopsCleanly(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "service.json")
	os.WriteFile(cfg, []byte(`{"metadata":{"name":"cli"},"containers":[{"name":"sleeper","command":"sleep 600",
		"readiness_check":{"exec":{"command":["true"]},"period_seconds":0.1}}]}`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int)
	go func() { done <- run(ctx, []string{"run", "--config", cfg, "--listen", addr}, io.Discard, &logs) }()
	var list []map[string]any
	var err error
	await.Until(t, 10*time.Second, "the container ready", func() bool {
		var resp *http.Response
		if resp, err = http.Get("http://" + addr + "/v1/containers"); err != nil {
			return false
		}
		defer resp.Body.Close()
		list = nil
		json.NewDecoder(resp.Body).Decode(&list)
		return len(list) == 1 && list[0]["ready"] == true
	}, func() string { return fmt.Sprintf("%v %v\n%s", err, list, logs.String()) })
	pid := int(list[0]["pid"].(float64))
	get := func(path string) string {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if _, err := nvml.Load("", nvml.Options{}); err != nil {
		// No NVIDIA driver here (--gpu=auto): the agent runs and says why there is no GPU data.
		if body := get("/v1/gpus"); !strings.Contains(body, `"up": false`) || !strings.Contains(body, "GPU monitoring unavailable") {
			t.Errorf("/v1/gpus: %s", body)
		}
		if body := get("/metrics"); !strings.Contains(body, "probe_agent_gpu_monitoring_up 0") {
			t.Error("/metrics lacks probe_agent_gpu_monitoring_up 0")
		}
		if !strings.Contains(logs.String(), `"msg":"no GPU monitoring: `) {
			t.Errorf("no log line says why GPU monitoring is off:\n%s", logs.String())
		}
		if !strings.Contains(get("/v1/containers"), `"gpus": []`) {
			t.Error("containers lack their gpus field")
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		if data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); !strings.Contains(string(data), " Z ") {
			t.Fatalf("container process %d survived the agent", pid)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"probe transition"`) {
		t.Fatalf("no transition logged:\n%s", logs.String())
	}
}

// Without an NVIDIA driver, --gpu=on refuses to start and the gpu command says why.
func TestGPUWithoutDriver(t *testing.T) {
	if src, err := nvml.Load("", nvml.Options{}); err == nil {
		src.Close()
		t.Skip("this machine has an NVIDIA driver")
	}
	var out bytes.Buffer
	code := run(context.Background(), []string{"run", "--config", "../../testdata/service.json", "--gpu", "on", "--listen", "127.0.0.1:0"}, &out, &out)
	if code != 1 || !strings.Contains(out.String(), "--gpu=on: ") || !strings.Contains(out.String(), "libnvidia-ml.so.1") {
		t.Fatalf("--gpu=on: exit %d: %s", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"gpu"}, &out, &out); code != 1 || !strings.HasPrefix(out.String(), "GPU monitoring unavailable: ") {
		t.Fatalf("gpu: exit %d: %s", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"gpu", "--json"}, &out, &out); code != 1 {
		t.Fatalf("gpu --json: exit %d: %s", code, out.String())
	}
	var r struct {
		Up      bool
		Message string
		GPUs    []any
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.Up || r.Message == "" || r.GPUs == nil {
		t.Fatalf("gpu --json: %v %s", err, out.String())
	}
}

// fakeGPUs is a one-GPU source for the CLI's tests.
type fakeGPUs struct{ closed chan struct{} }

func (f *fakeGPUs) Devices() []gpu.Device {
	return []gpu.Device{{UUID: "GPU-11111111-2222-3333-4444-555555555555", Name: "NVIDIA H100 80GB HBM3"}}
}
func (f *fakeGPUs) DriverVersion() string    { return "550.54.15" }
func (f *fakeGPUs) Events() <-chan gpu.Event { return nil }
func (f *fakeGPUs) Close() error             { close(f.closed); return nil }
func (f *fakeGPUs) Sample(context.Context) ([]gpu.Sample, error) {
	return []gpu.Sample{{UUID: "GPU-11111111-2222-3333-4444-555555555555", TempC: gpu.Some[uint32](40)}}, nil
}

// A driver that loads after the agent started (a GPU operator's driver container) is
// picked up by the retry: the monitor goes to the agent, the source back to the caller.
func TestRetryGPUAttachesALateDriver(t *testing.T) {
	var tries atomic.Int32
	src := &fakeGPUs{closed: make(chan struct{})}
	load := func(lib string) (gpu.Source, error) {
		if lib != nvml.LibraryName {
			t.Errorf("library %q", lib)
		}
		if tries.Add(1) < 3 {
			return nil, errors.New("nvml init: ERROR_DRIVER_NOT_LOADED")
		}
		return src, nil
	}
	attached := make(chan *gpu.Monitor, 1)
	got := retryGPU(context.Background(), gpuFlags{retry: 10 * time.Millisecond, interval: time.Hour}, zap.NewNop(), load,
		func(m *gpu.Monitor) { attached <- m })
	if got != src || tries.Load() != 3 {
		t.Fatalf("returned %v after %d tries", got, tries.Load())
	}
	if m := <-attached; len(m.Devices()) != 1 {
		t.Fatalf("monitor of %v", m.Devices())
	}

	// Cancelled before a driver shows up: nothing is attached.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if got := retryGPU(ctx, gpuFlags{retry: 10 * time.Millisecond}, zap.NewNop(),
		func(string) (gpu.Source, error) { return nil, errors.New("still no driver") },
		func(*gpu.Monitor) { t.Error("attached without a driver") }); got != nil {
		t.Fatalf("returned %v", got)
	}
}
