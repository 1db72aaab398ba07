//go:build linux && cgo && (no_dynamic_plugins || !amd64)

package agent

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/nvml"
	"github.com/probe-agent/probe-agent/gpu/nvml/nvmltest"
	"github.com/probe-agent/probe-agent/internal/testsock"
)

// mockNode is go-nvml's DGX A100 mock behind the agent's real NVML source.
type mockNode struct{ *nvmltest.Node }

func (n mockNode) source(t *testing.T) gpu.Source {
	for i := range 8 {
		n.SetVolatileCorrectedECC(i, 5)
	}
	s, err := nvml.New(n.Server, nvml.Options{PollTimeout: time.Second, WaitTimeout: 20 * time.Millisecond, Retry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
func (n mockNode) uuid(i int) string     { return n.UUID(i) }
func (n mockNode) xid(i int, xid uint64) { n.XID(i, xid) }
func (n mockNode) reset(i int)           { n.SetVolatileCorrectedECC(i, 0) }

func TestIntegrationGPUFatalXIDOnMockedDGXA100(t *testing.T) {
	t.Parallel()
	gpuReadinessScenario(t, mockNode{nvmltest.NewNode()})
}

// With NVML failing to initialise, the agent runs exactly as without GPUs and says why
// there is no GPU data; no NVML call follows the failed Init.
func TestIntegrationNVMLLibraryNotFoundLeavesTheAgentWorking(t *testing.T) {
	t.Parallel()
	lib := &mock.Interface{InitFunc: func() gonvml.Return { return gonvml.ERROR_LIBRARY_NOT_FOUND }}
	_, err := nvml.New(lib, nvml.Options{})
	var ie *nvml.InitError
	if !errors.As(err, &ie) || !ie.NoDriver() {
		t.Fatalf("init: %v", err)
	}
	e := &env{kind: "process", dir: t.TempDir(), bin: sampleServer, port: testsock.FreePort(t)}
	h := startAgent(t, e, `{"name":"c","env":[{"name":"NVIDIA_VISIBLE_DEVICES","value":"0"}],"command":`+e.server()+`,
		"port":`+strconv.Itoa(e.port)+`,"readiness_check":{"http_get":{"path":"/health"},"period_seconds":0.1}}`, func(o *Options) {
		o.GPUUnavailable, o.GPUReadiness = err.Error(), true
	})
	h.eventually(10*time.Second, "ready", func(s ContainerStatus) bool {
		return s.Ready && s.Probes["readiness"].ConsecutiveSuccesses > 2 && len(s.GPUs) == 0
	})
	if r := h.a.GPUReport(); r.Up || !strings.Contains(r.Message, "ERROR_LIBRARY_NOT_FOUND") && !strings.Contains(r.Message, "not found") {
		t.Fatalf("report %+v", r)
	}
	if len(lib.InitCalls()) != 1 || len(lib.DeviceGetCountCalls()) != 0 || len(lib.ShutdownCalls()) != 0 {
		t.Fatal("NVML called after a failed Init")
	}
}
