//go:build linux && cgo && (no_dynamic_plugins || !amd64)

package nvml

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"go.uber.org/goleak"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/nvml/nvmltest"
	"github.com/probe-agent/probe-agent/internal/await"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type node = nvmltest.Node

func healthyNode(t *testing.T) *node {
	t.Helper()
	return nvmltest.NewNode()
}

func open(t *testing.T, n *node) *Source {
	t.Helper()
	s, err := New(n.Server, Options{PollTimeout: 200 * time.Millisecond, WaitTimeout: 20 * time.Millisecond, Retry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func next(t *testing.T, s *Source) gpu.Event {
	t.Helper()
	select {
	case e := <-s.Events():
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return gpu.Event{}
}

func TestInitFailureMakesNoFurtherCall(t *testing.T) {
	// Every other method of this mock is nil and panics when called.
	m := &mock.Interface{InitFunc: func() gonvml.Return { return gonvml.ERROR_LIBRARY_NOT_FOUND }}
	_, err := New(m, Options{})
	var ie *InitError
	if !errors.As(err, &ie) || !ie.NoDriver() || !errors.Is(err, gonvml.ERROR_LIBRARY_NOT_FOUND) {
		t.Fatalf("got %v", err)
	}
	if len(m.InitCalls()) != 1 || len(m.DeviceGetCountCalls()) != 0 || len(m.ShutdownCalls()) != 0 {
		t.Fatal("NVML was called after a failed Init")
	}
}

func TestHealthyEightGPUNode(t *testing.T) {
	n := healthyNode(t)
	s := open(t, n)
	devs := s.Devices()
	if len(devs) != 8 {
		t.Fatalf("%d devices", len(devs))
	}
	samples, err := s.Sample(context.Background())
	if err != nil || len(samples) != 8 {
		t.Fatalf("sample: %v %d", err, len(samples))
	}
	for i, sm := range samples {
		if sm.UUID != devs[i].UUID || sm.TempC.V != 41 || sm.PowerMilliwatts.V != 71_000 || !sm.RemapFailed.OK ||
			sm.RetiredPagesPending.OK || sm.ClockEventReasons.V != 0 || !sm.RecoveryAction.OK || sm.Lost {
			t.Fatalf("sample %d: %+v", i, sm)
		}
		if v := gpu.Evaluate(gpu.Verdict{}, nil, &sm, nil, time.Now(), gpu.DefaultPolicy()); v.State != gpu.Healthy {
			t.Fatalf("GPU %d: %+v", i, v)
		}
	}
}

func TestXIDEventsMapToTheirGPU(t *testing.T) {
	n := healthyNode(t)
	s := open(t, n)
	three := n.Server.Devices[3]
	n.Event(gonvml.EventData{Device: three, EventType: gonvml.EventTypeXidCriticalError, EventData: 79,
		GpuInstanceId: gpu.NoInstance, ComputeInstanceId: gpu.NoInstance})
	e := next(t, s)
	uuid3, _ := three.GetUUID()
	if e.Kind != gpu.EventXID || e.XID != 79 || e.UUID != uuid3 {
		t.Fatalf("event %+v", e)
	}
	samples, _ := s.Sample(context.Background())
	pol := gpu.DefaultPolicy()
	for i, sm := range samples {
		var evs []gpu.Event
		if sm.UUID == e.UUID {
			evs = []gpu.Event{e}
		}
		want := gpu.Healthy
		if i == 3 {
			want = gpu.Unhealthy
		}
		if v := gpu.Evaluate(gpu.Verdict{}, nil, &sm, evs, time.Now(), pol); v.State != want {
			t.Fatalf("GPU %d: %v, want %v", i, v.State, want)
		}
	}
	n.Event(gonvml.EventData{Device: three, EventType: gonvml.EventTypeXidCriticalError, EventData: 13})
	if e := next(t, s); gpu.DefaultPolicy().Severity(e.XID) != gpu.SeverityIgnore {
		t.Fatalf("XID 13 not ignored: %+v", e)
	}
}

func TestWaitErrorsRecreateTheEventSet(t *testing.T) {
	n := healthyNode(t)
	s := open(t, n)
	n.FailWait(gonvml.ERROR_UNKNOWN)
	await.Until(t, 5*time.Second, "the event set recreated after a Wait error", func() bool { return n.EventSets() >= 2 })
	n.Event(gonvml.EventData{Device: n.Server.Devices[0], EventType: gonvml.EventTypeDoubleBitEccError})
	if e := next(t, s); e.Kind != gpu.EventDBE {
		t.Fatalf("after recovery: %+v", e)
	}
}

func TestGPUIsLostMarksEveryGPU(t *testing.T) {
	n := healthyNode(t)
	s := open(t, n)
	n.FailWait(gonvml.ERROR_GPU_IS_LOST)
	seen := map[string]bool{}
	for range 8 {
		e := next(t, s)
		if e.Kind != gpu.EventLost {
			t.Fatalf("event %+v", e)
		}
		seen[e.UUID] = true
	}
	if len(seen) != 8 {
		t.Fatalf("lost events for %d GPUs", len(seen))
	}
}

func TestBlockingGetterTimesOut(t *testing.T) {
	n := healthyNode(t)
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	n.Server.Devices[5].(*server.Device).GetTemperatureFunc = func(gonvml.TemperatureSensors) (uint32, gonvml.Return) {
		<-release // a wedged GPU
		return 0, gonvml.ERROR_GPU_IS_LOST
	}
	s := open(t, n)
	start := time.Now()
	if _, err := s.Sample(context.Background()); !errors.Is(err, gpu.ErrPollTimeout) {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("timed out after %v", d)
	}
	if _, err := s.Sample(context.Background()); !errors.Is(err, gpu.ErrPollTimeout) {
		t.Fatalf("a second poll started while the first is stuck: %v", err)
	}
	once.Do(func() { close(release) })
	var samples []gpu.Sample
	await.Until(t, 5*time.Second, "polling to resume", func() bool {
		var err error
		samples, err = s.Sample(context.Background())
		return err == nil
	})
	if !samples[5].Lost {
		t.Fatalf("GPU_IS_LOST not reported: %+v", samples[5])
	}
}

func TestOptionalSymbolFallback(t *testing.T) {
	n := healthyNode(t)
	n.Server.LookupSymbolFunc = func(string) error { return errors.New("undefined symbol") }
	s := open(t, n)
	samples, err := s.Sample(context.Background())
	if err != nil || samples[0].ClockEventReasons.V != 0x40 {
		t.Fatalf("fallback not used: %v %+v", err, samples[0].ClockEventReasons)
	}
	if v := gpu.Evaluate(gpu.Verdict{}, nil, &samples[0], nil, time.Now(), gpu.DefaultPolicy()); v.State != gpu.Degraded {
		t.Fatalf("hardware slowdown not degraded: %+v", v)
	}
}

// A MIG-enabled GPU's slices are listed with their instance IDs, so that containers
// given a slice are mapped to the GPU.
func TestMIGSlicesAreEnumerated(t *testing.T) {
	n := healthyNode(t)
	d := n.Device(2)
	d.SetMigMode(gonvml.DEVICE_MIG_ENABLE)
	d.GetMaxMigDeviceCountFunc = func() (int, gonvml.Return) { return 7, gonvml.SUCCESS }
	d.GetMigDeviceHandleByIndexFunc = func(i int) (gonvml.Device, gonvml.Return) {
		if i >= 2 {
			return nil, gonvml.ERROR_NOT_FOUND
		}
		return &mock.Device{
			GetUUIDFunc: func() (string, gonvml.Return) {
				return fmt.Sprintf("MIG-8a1f0c2e-1b2c-5d3e-9f4a-%012d", i), gonvml.SUCCESS
			},
			GetGpuInstanceIdFunc:     func() (int, gonvml.Return) { return 7 + i, gonvml.SUCCESS },
			GetComputeInstanceIdFunc: func() (int, gonvml.Return) { return 0, gonvml.SUCCESS },
		}, gonvml.SUCCESS
	}
	s := open(t, n)
	devs := s.Devices()
	if !devs[2].MIG || len(devs[2].MIGDevices) != 2 || devs[2].MIGDevices[1].GI != 8 ||
		devs[2].MIGDevices[1].UUID != "MIG-8a1f0c2e-1b2c-5d3e-9f4a-000000000001" {
		t.Fatalf("GPU 2: %+v", devs[2])
	}
	if devs[1].MIG || devs[1].MIGDevices != nil {
		t.Fatalf("GPU 1: %+v", devs[1])
	}
	r := gpu.Request{IDs: []string{"MIG-8a1f0c2e-1b2c-5d3e-9f4a-000000000001"}}
	if got, _ := r.Resolve(devs); len(got) != 1 || got[0].Index != 2 {
		t.Fatalf("MIG slice resolved to %+v", got)
	}
}
