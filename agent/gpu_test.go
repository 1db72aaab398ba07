package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/gputest"
	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
)

// gpuNode is a GPU node a test can break and repair: a fake source, or go-nvml's mock
// behind the real NVML source.
type gpuNode interface {
	source(t *testing.T) gpu.Source
	uuid(i int) string
	xid(i int, xid uint64)
	// reset makes GPU i look freshly reset (its volatile ECC counters drop).
	reset(i int)
}

// fakeNode is an 8-GPU node without NVML.
type fakeNode struct{ *gputest.Node }

func newFakeNode() fakeNode { return fakeNode{gputest.New(8)} }

func (n fakeNode) source(*testing.T) gpu.Source { return n.Node }
func (n fakeNode) uuid(i int) string            { return n.UUID(i) }
func (n fakeNode) xid(i int, xid uint64)        { n.XID(i, xid) }
func (n fakeNode) reset(i int)                  { n.Reset(i) }

func TestIntegrationGPUFatalXIDTakesReadinessFromThatGPUsContainers(t *testing.T) {
	t.Parallel()
	gpuReadinessScenario(t, newFakeNode())
}

// gpuReadinessScenario runs four containers: two on GPU 3 (by UUID and by index), one
// on GPU 1 and one without a GPU. An ignored XID on GPU 1 changes nothing; a fatal XID
// on GPU 3 makes exactly the two containers on it not ready, with the reason, UUID and
// XID in status, logs and metrics; a reset of GPU 3 makes them ready again.
func gpuReadinessScenario(t *testing.T, node gpuNode) {
	e := &env{kind: "process", dir: t.TempDir(), bin: sampleServer}
	names := []string{"on3-uuid", "on3-index", "on1", "nogpu"}
	gpuEnv := map[string]string{"on3-uuid": node.uuid(3), "on3-index": "3", "on1": node.uuid(1) + "::2"}
	var list []string
	for _, name := range names {
		e.port = testsock.FreePort(t)
		env := ""
		if v, ok := gpuEnv[name]; ok {
			env = `"env":[{"name":"NVIDIA_VISIBLE_DEVICES","value":` + quote(v) + `}],`
		}
		list = append(list, `{"name":"`+name+`",`+env+`"command":`+e.server()+`,"port":`+strconv.Itoa(e.port)+`,
			"readiness_check":{"http_get":{"path":"/health"},"period_seconds":0.1}}`)
	}
	src := node.source(t)
	var mon *gpu.Monitor
	h := startAgent(t, e, strings.Join(list, ","), func(o *Options) {
		mon = gpu.NewMonitor(src, gpu.DefaultPolicy(), 50*time.Millisecond, o.Logger)
		o.GPU, o.GPUReadiness = mon, true
	})
	h.m.Registry.MustRegister(gpu.NewCollector(mon, h.a.ContainerGPUs))
	srv := httptest.NewServer(h.a.Handler(h.m.Registry))
	defer srv.Close()
	get := func(path string) string {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	all := func(what string, cond func(name string, s ContainerStatus) bool) {
		t.Helper()
		var bad ContainerStatus
		await.Until(t, 10*time.Second, what, func() bool {
			for _, n := range names {
				if s, known := h.a.Container(n); !known || !cond(n, s) {
					bad = s
					return false
				}
			}
			return true
		}, func() string {
			b, _ := json.MarshalIndent(bad, "", " ")
			return string(b) + "\nlogs:\n" + h.logTail()
		})
	}
	gpuReport := func() gpu.Report {
		var r gpu.Report
		if err := json.Unmarshal([]byte(get("/v1/gpus")), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}

	all("every container ready on healthy GPUs", func(_ string, s ContainerStatus) bool { return s.Ready })
	for name, want := range map[string]int{"on3-uuid": 3, "on3-index": 3, "on1": 1, "nogpu": -1} {
		s := h.status(name)
		if want < 0 && len(s.GPUs) != 0 || want >= 0 && (len(s.GPUs) != 1 || s.GPUs[0].Index != want ||
			s.GPUs[0].UUID != node.uuid(want) || s.GPUs[0].Health != "healthy") {
			t.Fatalf("%s: gpus %+v, want GPU %d", name, s.GPUs, want)
		}
	}
	if r := gpuReport(); !r.Up || len(r.GPUs) != 8 || strings.Join(r.GPUs[3].Containers, ",") != "on3-index,on3-uuid" {
		t.Fatalf("/v1/gpus: %+v", r)
	}

	// An ignored XID is logged and counted, and nothing else happens.
	node.xid(1, 13)
	await.Until(t, 10*time.Second, "XID 13 reported", func() bool { return gpuReport().GPUs[1].XIDs["13"] == 1 })
	time.Sleep(200 * time.Millisecond) // several polls
	all("every container still ready after XID 13", func(_ string, s ContainerStatus) bool { return s.Ready })
	if h.logs.FilterMessage("container gpu unhealthy").Len() != 0 {
		t.Fatalf("XID 13 made a container GPU-unhealthy:\n%s", h.logTail())
	}

	// A fatal XID on GPU 3: exactly its two containers lose readiness.
	node.xid(3, 79)
	on3 := func(n string) bool { return strings.HasPrefix(n, "on3") }
	all("GPU 3's containers not ready", func(n string, s ContainerStatus) bool {
		if on3(n) {
			return !s.Ready && s.NotReadyReason == "gpu" && s.GPUs[0].Health == "unhealthy" && s.GPUs[0].XID == 79
		}
		return s.Ready
	})
	for _, n := range []string{"on3-uuid", "on3-index"} {
		lines := h.logs.FilterMessage("container gpu unhealthy").FilterField(zap.String("container", n)).All()
		if len(lines) != 1 {
			t.Fatalf("%s: %d 'container gpu unhealthy' lines", n, len(lines))
		}
		m := lines[0].ContextMap()
		if fmt.Sprint(m["gpu_uuids"]) != fmt.Sprint([]any{node.uuid(3)}) || fmt.Sprint(m["xids"]) != "[79]" {
			t.Fatalf("%s: log fields %v", n, m)
		}
	}
	if h.logs.FilterMessage("gpu event").FilterField(zap.Uint64("xid", 79)).
		FilterField(zap.String("xid_name", "GPU_HAS_FALLEN_OFF_THE_BUS")).FilterField(zap.String("severity", "fatal")).
		FilterField(zap.String("gpu_uuid", node.uuid(3))).Len() != 1 {
		t.Fatalf("no gpu event line for XID 79:\n%s", h.logTail())
	}
	metrics := get("/metrics")
	for _, want := range []string{
		`probe_agent_container_ready{container="on3-uuid",namespace="",pod=""} 0`,
		`probe_agent_container_ready{container="on1",namespace="",pod=""} 1`,
		`probe_agent_container_gpu_healthy{container="on3-index",namespace="",pod=""} 0`,
		`probe_agent_container_gpu_healthy{container="on1",namespace="",pod=""} 1`,
		`probe_agent_container_gpu_info{container="on3-uuid",gpu="3",namespace="",pod="",uuid="` + node.uuid(3) + `"} 1`,
		`probe_agent_gpu_last_xid{gpu="3",uuid="` + node.uuid(3) + `"} 79`,
		`probe_agent_gpu_health_state{gpu="3",state="unhealthy",uuid="` + node.uuid(3) + `"} 1`,
		`probe_agent_gpu_xid_errors_total{gpu="1",uuid="` + node.uuid(1) + `",xid="13"} 1`,
		`probe_agent_gpu_monitoring_up 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, `probe_agent_container_gpu_healthy{container="nogpu"`) {
		t.Error("a container without GPUs has GPU series")
	}

	// The GPU is reset: its containers are ready again.
	node.reset(3)
	all("ready again after the reset", func(_ string, s ContainerStatus) bool { return s.Ready })
	if h.logs.FilterMessage("container gpu healthy").Len() != 2 {
		t.Fatalf("recovery not logged:\n%s", h.logTail())
	}
	promtoolCheckMetrics(t, get("/metrics"))
}

// promtoolCheckMetrics runs Prometheus's own linter on a /metrics exposition.
func promtoolCheckMetrics(t *testing.T, exposition string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool is needed to check the metrics (apt-get install prometheus)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Log(msg + "; not checked")
		return
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	if !strings.Contains(exposition, "probe_agent_gpu_xid_errors_total") || !strings.Contains(exposition, "probe_agent_container_restarts_total") {
		t.Fatalf("the exposition lacks GPU or container series:\n%s", exposition)
	}
}

func TestIntegrationGPUReadinessOffReportsButKeepsReady(t *testing.T) {
	t.Parallel()
	node := newFakeNode()
	e := &env{kind: "process", dir: t.TempDir(), bin: sampleServer, port: testsock.FreePort(t)}
	h := startAgent(t, e, `{"name":"c","env":[{"name":"NVIDIA_VISIBLE_DEVICES","value":"all"}],"command":`+e.server()+`,
		"port":`+strconv.Itoa(e.port)+`,"readiness_check":{"tcp_socket":{},"period_seconds":0.1}}`, func(o *Options) {
		o.GPU = gpu.NewMonitor(node, gpu.DefaultPolicy(), 50*time.Millisecond, o.Logger)
	})
	h.eventually(10*time.Second, "ready on 8 GPUs", func(s ContainerStatus) bool { return s.Ready && len(s.GPUs) == 8 })
	node.xid(5, 48)
	h.eventually(10*time.Second, "GPU 5 unhealthy in the status", func(s ContainerStatus) bool {
		return s.GPUs[5].Health == "unhealthy" && s.GPUs[5].XID == 48
	})
	h.consistently(300*time.Millisecond, "still ready", ready)
	if l := h.logs.FilterMessage("container gpu unhealthy").FilterField(zap.String("readiness", "unchanged (--gpu-readiness=false)")); l.Len() != 1 {
		t.Fatalf("log:\n%s", h.logTail())
	}
}

func TestGPUReportWithoutMonitor(t *testing.T) {
	t.Parallel()
	a := New(Options{GPUUnavailable: "NVML not found (ERROR_LIBRARY_NOT_FOUND)"})
	r := a.GPUReport()
	if r.Up || r.Message != "NVML not found (ERROR_LIBRARY_NOT_FOUND)" || r.GPUs == nil {
		t.Fatalf("%+v", r)
	}
}

// A GPU monitor attached after the agent started (the driver loaded late) maps the
// running containers to their GPUs and gates their readiness from then on.
func TestIntegrationGPUAttachedLate(t *testing.T) {
	t.Parallel()
	node := newFakeNode()
	e := &env{kind: "process", dir: t.TempDir(), bin: sampleServer, port: testsock.FreePort(t)}
	h := startAgent(t, e, `{"name":"c","env":[{"name":"NVIDIA_VISIBLE_DEVICES","value":"2"}],"command":`+e.server()+`,
		"port":`+strconv.Itoa(e.port)+`,"readiness_check":{"tcp_socket":{},"period_seconds":0.1}}`, func(o *Options) {
		o.GPUUnavailable, o.GPUReadiness = "GPU monitoring unavailable: nvml init: ERROR_DRIVER_NOT_LOADED", true
	})
	h.m.Registry.MustRegister(gpu.NewCollectorFunc(h.a.GPUMonitor, h.a.ContainerGPUs))
	h.eventually(10*time.Second, "ready without GPU data", func(s ContainerStatus) bool { return s.Ready && len(s.GPUs) == 0 })
	if r := h.a.GPUReport(); r.Up || !strings.Contains(r.Message, "ERROR_DRIVER_NOT_LOADED") {
		t.Fatalf("report before the driver: %+v", r)
	}
	monitoringUp := func(v string) error {
		return testutil.GatherAndCompare(h.m.Registry, strings.NewReader(`
# HELP probe_agent_gpu_monitoring_up 1 when NVML is initialised and the last GPU poll worked, 0 otherwise.
# TYPE probe_agent_gpu_monitoring_up gauge
probe_agent_gpu_monitoring_up `+v+"\n"), "probe_agent_gpu_monitoring_up")
	}
	if err := monitoringUp("0"); err != nil {
		t.Fatal(err)
	}
	h.a.AttachGPU(gpu.NewMonitor(node, gpu.DefaultPolicy(), 50*time.Millisecond, h.a.log))
	h.eventually(10*time.Second, "mapped to GPU 2", func(s ContainerStatus) bool {
		return s.Ready && len(s.GPUs) == 1 && s.GPUs[0].UUID == node.uuid(2) && s.GPUs[0].Health == "healthy"
	})
	if err := monitoringUp("1"); err != nil {
		t.Fatalf("after the attach: %v", err)
	}
	node.xid(2, 79)
	h.eventually(10*time.Second, "not ready for GPU 2", func(s ContainerStatus) bool {
		return !s.Ready && s.NotReadyReason == "gpu" && s.GPUs[0].XID == 79
	})
}
