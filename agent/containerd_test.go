package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ctrd "github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime/containerd"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
	"github.com/probe-agent/probe-agent/service"
)

// containerdAgent runs an agent on the containerd runtime of env e with an optional
// service.json containers array (entries get e's rootfs) and a state directory.
func containerdAgent(t *testing.T, e *env, containers, stateDir string, tweak ...func(*Options)) *harness {
	t.Helper()
	var svc *service.Service
	if containers != "" {
		var err error
		doc := `{"metadata":{"name":"ctrd"},"containers":[` + containers + `]}`
		if svc, err = service.Parse([]byte(doc), service.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	rt, err := containerd.New(containerd.Options{Address: e.daemon.Address, Service: svc, StateDir: stateDir, RuntimeDir: t.TempDir(),
		NoExecRunner: e.noRunner, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return runAgent(t, Options{Runtime: rt, Logger: log, Backoff: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
		GracePeriod: MinGracePeriod, Prober: prober.Options{Workers: 8}, StateDir: stateDir}, logs, tweak...)
}

func containerdEnv(t *testing.T) *env {
	t.Helper()
	ctrdtest.Require(t)
	containerdSlots <- struct{}{}
	t.Cleanup(func() { <-containerdSlots })
	return newContainerdEnv(t)
}

func TestIntegrationContainerdExplainsLoopbackOnlyServer(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	h := containerdAgent(t, e, `{"name":"c","rootfs":`+quote(e.rootfs)+`,"command":`+quote(e.bin+" --bind 127.0.0.1 --port 8000")+`,
		"readiness_check":{"http_get":{"path":"/health","port":8000},"initial_delay_seconds":1,"period_seconds":0.2}}`, t.TempDir())
	s := h.waitFor("c", 10*time.Second, "running", func(s ContainerStatus) bool { return s.PID != 0 })
	// Give the container's network namespace an address that is not loopback, as a
	// pod network would; probes target it, the server only listens on 127.0.0.1.
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(s.PID), "-n", "ip", "addr", "add", "192.0.2.10/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("adding an address: %v: %s", err, out)
	}
	want := "listening on 127.0.0.1:8000 only; bind 0.0.0.0"
	s = h.waitFor("c", 10*time.Second, "the explanation", func(s ContainerStatus) bool {
		return strings.Contains(s.Probes["readiness"].LastOutput, want)
	})
	if !strings.Contains(s.Probes["readiness"].LastOutput, "192.0.2.10:8000") || s.Ready {
		t.Fatalf("readiness %+v", s.Probes["readiness"])
	}
	await.Until(t, 5*time.Second, "a log line with the explanation", func() bool {
		for _, l := range h.logs.FilterMessage("probe failing").All() {
			if strings.Contains(fmt.Sprint(l.ContextMap()["output"]), want) {
				return true
			}
		}
		return false
	}, h.logTail)
}

func TestIntegrationContainerdBadLabelReportedForThatContainerOnly(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	ctrdtest.RunContainer(t, client, "default", "good", e.rootfs,
		map[string]string{containerd.LabelChecks: `{"readiness_check":{"exec":{"command":["true"]},"period_seconds":0.2}}`}, "sleep", "600")
	ctrdtest.RunContainer(t, client, "default", "bad", e.rootfs,
		map[string]string{containerd.LabelChecks: `{"readiness_check":{"tcp_socket":{"port":0}},"colour":"red"}`}, "sleep", "600")
	ctrdtest.RunContainer(t, client, "default", "unlabelled", e.rootfs, nil, "sleep", "600")
	h := containerdAgent(t, e, "", t.TempDir())
	h.waitFor("good", 10*time.Second, "ready", ready)
	bad := h.waitFor("bad", 10*time.Second, "listed", func(s ContainerStatus) bool { return s.Message != "" })
	for _, want := range []string{`container default/bad label "probe-agent.io/checks".colour: unknown field`,
		`label "probe-agent.io/checks".readiness_check.tcp_socket.port: required`} {
		if !strings.Contains(bad.Message, want) {
			t.Errorf("message %q lacks %q", bad.Message, want)
		}
	}
	if bad.Ready || len(bad.Probes) != 0 || bad.State != StateRunning {
		t.Fatalf("bad container %+v", bad)
	}
	if v, _ := metricValue(t, h, "probe_agent_container_checks_invalid", map[string]string{"container": "bad"}); v != 1 {
		t.Fatalf("checks_invalid for bad = %v", v)
	}
	if v, ok := metricValue(t, h, "probe_agent_container_checks_invalid", map[string]string{"container": "good"}); !ok || v != 0 {
		t.Fatalf("checks_invalid for good = %v", v)
	}
	if _, ok := h.a.Container("unlabelled"); ok {
		t.Fatal("a container without checks is listed")
	}
	if h.logs.FilterMessage("container checks invalid").Len() != 1 {
		t.Fatalf("want one log line for the bad label:\n%s", h.logTail())
	}
	h.consistently(500*time.Millisecond, "good stays ready", func(ContainerStatus) bool {
		s, _ := h.a.Container("good")
		return s.Ready
	})
}

// metricValue reads the series of a gauge or counter whose labels include the given
// ones from the agent's registry; 0 and false when there is none.
func metricValue(t *testing.T, h *harness, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := h.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return m.GetGauge().GetValue() + m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func TestIntegrationContainerdDaemonRestartLosesNothing(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	ctrdtest.RunContainer(t, client, "default", "labelled", e.rootfs,
		map[string]string{containerd.LabelChecks: `{"readiness_check":{"http_get":{"path":"/health","port":8000},"period_seconds":0.2},
			"liveness_check":{"exec":{"command":["true"]},"period_seconds":0.2}}`}, e.bin, "--port", "8000")
	h := containerdAgent(t, e, `{"name":"owned","rootfs":`+quote(e.rootfs)+`,"command":`+quote(e.bin+" --port 8000")+`,
		"readiness_check":{"tcp_socket":{"port":8000},"period_seconds":0.2},
		"liveness_check":{"exec":{"command":["true"]},"period_seconds":0.2}}`, t.TempDir())
	for _, n := range []string{"labelled", "owned"} {
		h.waitFor(n, 10*time.Second, "ready", ready)
	}
	const probes = 4 // two containers, two checks each
	pids := map[string]int{}
	for _, n := range []string{"labelled", "owned"} {
		s, _ := h.a.Container(n)
		pids[n] = s.PID
	}

	e.daemon.Kill()
	await.Until(t, 10*time.Second, "/readyz false with containerd down", func() bool { return !h.a.Ready() })
	time.Sleep(time.Second)
	if len(h.a.Containers()) != 2 {
		t.Fatalf("containers lost while containerd is down: %+v", h.a.Containers())
	}
	e.daemon.Restart()
	await.Until(t, 20*time.Second, "the agent to reconnect", h.a.Ready, h.logTail)
	time.Sleep(time.Second)
	for _, n := range []string{"labelled", "owned"} {
		s := h.waitFor(n, 5*time.Second, "ready again", ready)
		if s.RestartCount != 0 || s.PID != pids[n] {
			t.Errorf("%s restarted across the containerd restart: %+v", n, s)
		}
	}
	if got := h.a.Manager().Scheduled(); got > probes {
		t.Errorf("%d probes scheduled after reconnecting for %d checks: duplicate workers", got, probes)
	}
	// Re-listing after the reconnect must not report known instances again: that would
	// register their probes anew and reset their state.
	if n := h.logs.FilterMessage("container started").Len(); n != 2 {
		t.Errorf("%d \"container started\" lines for 2 containers: instances reported again after reconnecting", n)
	}
	if n := h.logs.FilterMessage("containerd connected").Len(); n != 2 {
		t.Errorf("connected %d times, want 2", n)
	}
	if n := h.logs.FilterMessage("stopping container, will be restarted").Len(); n != 0 {
		t.Errorf("healthy containers were stopped:\n%s", h.logTail())
	}
}

func TestIntegrationContainerdAgentRestartKeepsState(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	stateDir := t.TempDir()
	spec := `{"name":"model","rootfs":` + quote(e.rootfs) + `,"command":` + quote(e.bin+" --port 8000") + `,
		"startup_check":{"tcp_socket":{"port":8000},"period_seconds":0.1,"failure_threshold":50},
		"readiness_check":{"http_get":{"path":"/health","port":8000},"period_seconds":0.3},
		"liveness_check":{"exec":{"command":["sh","-c","test -f /tmp/once || { touch /tmp/once; exit 1; }"]},"period_seconds":0.3}}`
	first := containerdAgent(t, e, spec, stateDir)
	s := first.waitFor("model", 20*time.Second, "ready after one liveness restart", func(s ContainerStatus) bool {
		return s.Ready && s.RestartCount == 1
	})
	pid := s.PID
	stopAgent(t, first)

	second := containerdAgent(t, e, spec, stateDir)
	seen := false
	var s2 ContainerStatus
	await.Holds(t, 3*time.Second, "ready, started, the same instance and restart count after the agent restart", func() bool {
		var ok bool
		if s2, ok = second.a.Container("model"); ok {
			seen = true
			return s2.Ready && s2.Started && s2.RestartCount == 1 && s2.PID == pid
		}
		return true
	}, func() string { return fmt.Sprintf("%+v", s2) })
	if !seen {
		t.Fatal("the container was not found again")
	}
	for _, msg := range []string{"probe transition", "stopping container, will be restarted", "restarting container"} {
		if n := second.logs.FilterMessage(msg).Len(); n != 0 {
			t.Errorf("%d %q lines after the agent restart:\n%s", n, msg, second.logTail())
		}
	}
	if st, _ := second.a.Manager().Status("model"); len(st.Probes[service.Startup].History) != 0 {
		t.Errorf("startup probed again after the agent restart")
	}
}

// stopAgent stops a harness's agent now rather than at the end of the test.
func stopAgent(t *testing.T, h *harness) {
	t.Helper()
	if h.stop == nil {
		t.Fatal("no stop function")
	}
	h.stop()
}

func TestIntegrationContainerdCreatesContainersFromImages(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	ctrdtest.ImportImage(t, client, containerd.OwnedNamespace, "docker.io/local/model:1", e.rootfs, []string{e.bin, "--port", "8000"})
	h := containerdAgent(t, e, `{"name":"from-image","image":"docker.io/local/model:1","env":[{"name":"LOAD_SECONDS","value":"0.2"}],
		"readiness_check":{"http_get":{"path":"/health","port":8000},"period_seconds":0.1}},
		{"name":"missing","image":"docker.io/local/absent:1","readiness_check":{"tcp_socket":{"port":8000}}}`, t.TempDir())
	s := h.waitFor("from-image", 20*time.Second, "ready", ready)
	if s.ID != "from-image" {
		t.Fatalf("status %+v", s)
	}
	m := h.waitFor("missing", 10*time.Second, "an error", func(s ContainerStatus) bool { return s.State == StateError || s.State == StateBackoff })
	if !strings.Contains(m.Message, "not in containerd's image store") && !strings.Contains(m.Message, "back-off") {
		t.Fatalf("message %q", m.Message)
	}
	if h.logs.FilterMessage("container could not start").Len() == 0 {
		t.Fatal("no log line for the missing image")
	}
}

func TestIntegrationContainerdLabelledContainerRestartedInPlace(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	task := ctrdtest.RunContainer(t, client, "default", "web", e.rootfs,
		map[string]string{containerd.LabelChecks: `{"liveness_check":{"exec":{"command":["sh","-c",
			"test -f /tmp/once || { touch /tmp/once; exit 1; }"]},"period_seconds":0.2}}`}, "sleep", "600")
	h := containerdAgent(t, e, "", t.TempDir())
	s := h.waitFor("web", 20*time.Second, "restarted in place", func(s ContainerStatus) bool {
		return s.RestartCount == 1 && s.State == StateRunning && s.PID != 0
	})
	if s.ID != "web" || s.PID == int(task.Pid()) {
		t.Fatalf("status %+v: want the same container with a new task", s)
	}
	h.consistently(time.Second, "healthy after the restart", func(ContainerStatus) bool {
		s, _ := h.a.Container("web")
		return s.RestartCount == 1 && s.State == StateRunning
	})
}

func TestIntegrationContainerdLeavesRestartMonitorContainersToContainerd(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	// containerd's restart monitor (1.6: every 10 s) starts containers labelled with
	// a desired status of running; the agent only stops them.
	ctrdtest.RunContainer(t, client, "default", "monitored", e.rootfs, map[string]string{
		"containerd.io/restart.status": "running",
		containerd.LabelChecks: `{"liveness_check":{"exec":{"command":["sh","-c",
			"test -f /tmp/once || { touch /tmp/once; exit 1; }"]},"period_seconds":0.2}}`}, "sleep", "600")
	h := containerdAgent(t, e, "", t.TempDir())
	s := h.waitFor("monitored", 10*time.Second, "stopped", func(s ContainerStatus) bool { return s.State == StateExited })
	if !strings.Contains(s.Message, "containerd restart monitor") {
		t.Fatalf("message %q", s.Message)
	}
	h.waitFor("monitored", 30*time.Second, "restarted by containerd and followed", func(s ContainerStatus) bool {
		return s.State == StateRunning && s.RestartCount == 1
	})
	if n := h.logs.FilterMessage("restarting container").Len(); n != 0 {
		t.Fatalf("the agent restarted it too:\n%s", h.logTail())
	}
}

// A container whose spec names GPUs the way the NVIDIA toolkit and device plugin do
// (NVIDIA_VISIBLE_DEVICES with a UUID, /dev/nvidiaN device entries) is mapped to those
// GPUs, and loses readiness when one of them fails.
func TestIntegrationContainerdGPUMappingFromSpec(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	node := newFakeNode()
	client := e.daemon.Client(t)
	withNvidiaDevices := func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		for _, minor := range []int64{3, 255} { // /dev/nvidia3 and /dev/nvidiactl
			path := "/dev/nvidia" + strconv.FormatInt(minor, 10)
			if minor == 255 {
				path = "/dev/nvidiactl"
			}
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: path, Type: "c", Major: 195, Minor: minor})
		}
		return nil
	}
	ctrdtest.RunContainerSpec(t, client, "default", "inference",
		map[string]string{containerd.LabelChecks: `{"readiness_check":{"exec":{"command":["true"]},"period_seconds":0.1}}`},
		oci.WithRootFSPath(e.rootfs), oci.WithDefaultPathEnv, oci.WithEnv([]string{"NVIDIA_VISIBLE_DEVICES=" + node.uuid(1)}),
		withNvidiaDevices, oci.WithProcessArgs("sleep", "600"))
	h := containerdAgent(t, e, "", t.TempDir(), func(o *Options) {
		o.GPU, o.GPUReadiness = gpu.NewMonitor(node, gpu.DefaultPolicy(), 50*time.Millisecond, o.Logger), true
	})
	s := h.waitFor("inference", 10*time.Second, "ready", ready)
	if len(s.GPUs) != 2 || s.GPUs[0].UUID != node.uuid(1) || s.GPUs[1].UUID != node.uuid(3) {
		t.Fatalf("gpus %+v, want GPUs 1 (by UUID) and 3 (by /dev/nvidia3)", s.GPUs)
	}
	node.xid(3, 79)
	h.waitFor("inference", 10*time.Second, "not ready for GPU 3", func(s ContainerStatus) bool {
		return !s.Ready && s.NotReadyReason == "gpu" && s.GPUs[1].XID == 79 && s.GPUs[0].Health == "healthy"
	})
}

// An exec check whose command is missing or not executable fails like a shell would
// (127, 126) with runc's message as its output, on the exec runner and through
// containerd exec alike; it is a failure of the check, not an error of the probe.
func TestIntegrationContainerdExecMissingCommand(t *testing.T) {
	t.Parallel()
	outputs := map[bool]map[string]string{}
	for _, noRunner := range []bool{false, true} {
		outputs[noRunner] = map[string]string{}
		t.Run(map[bool]string{false: "runner", true: "containerd-exec"}[noRunner], func(t *testing.T) {
			e := containerdEnv(t)
			e.noRunner = noRunner
			client := e.daemon.Client(t)
			ctrdtest.RunContainer(t, client, "default", "missing", e.rootfs,
				map[string]string{containerd.LabelChecks: `{"readiness_check":{"exec":{"command":["/no/such/binary"]},"period_seconds":0.2}}`}, "sleep", "600")
			ctrdtest.RunContainer(t, client, "default", "notexec", e.rootfs,
				map[string]string{containerd.LabelChecks: `{"readiness_check":{"exec":{"command":["/"]},"period_seconds":0.2}}`}, "sleep", "600")
			e.h = containerdAgent(t, e, "", t.TempDir())
			for name, want := range map[string]string{"missing": "no such file or directory", "notexec": "permission denied"} {
				s := e.h.waitFor(name, 10*time.Second, "failed readiness probes", func(s ContainerStatus) bool {
					return s.Probes["readiness"] != nil && len(s.Probes["readiness"].History) >= 3
				})
				for _, p := range s.Probes["readiness"].History {
					if !strings.Contains(p.Output, want) || !strings.Contains(p.Output, "exit code 12") || p.Result != "failure" {
						t.Errorf("%s: %+v, want a failure saying %q", name, p, want)
					}
				}
				outputs[noRunner][name] = s.Probes["readiness"].LastOutput
			}
			checkExecPaths(t, e)
		})
	}
	t.Logf("%q", outputs[false])
	if fmt.Sprint(outputs[false]) != fmt.Sprint(outputs[true]) {
		t.Errorf("outputs differ between the paths:\nrunner:          %q\ncontainerd exec: %q", outputs[false], outputs[true])
	}
}

// netnsChildEnv, when set, makes TestIntegrationContainerdProbesInTheContainersNamespace
// the agent half of the test: it is run in a network namespace of its own by the other
// half, with the containerd address in this variable.
const netnsChildEnv = "PROBE_AGENT_TEST_NETNS_AGENT"

// TestIntegrationContainerdProbesInTheContainersNamespace runs the agent in a network
// namespace of its own, as the DaemonSet does (a pod network, with hostPID), against a
// host-network container and a pod-network container that both serve on 127.0.0.1
// only: each must be probed from its own namespace, stay ready and never be restarted.
func TestIntegrationContainerdProbesInTheContainersNamespace(t *testing.T) {
	if addr := os.Getenv(netnsChildEnv); addr != "" {
		agentInOwnNetns(t, addr)
		return
	}
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	hostPort := testsock.FreePort(t)
	checks := func(port int) map[string]string {
		c := fmt.Sprintf(`{"path":"/health","port":%d}`, port)
		return map[string]string{containerd.LabelChecks: `{"liveness_check":{"http_get":` + c + `,"initial_delay_seconds":1,"period_seconds":0.2,"failure_threshold":3},
			"readiness_check":{"http_get":` + c + `,"period_seconds":0.2}}`}
	}
	ctrdtest.RunContainerSpec(t, client, "default", "hostnet", checks(hostPort), oci.WithRootFSPath(e.rootfs), oci.WithDefaultPathEnv,
		oci.WithHostNamespace(specs.NetworkNamespace), oci.WithProcessArgs(e.bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(hostPort)))
	ctrdtest.RunContainerSpec(t, client, "default", "podnet", checks(8000), oci.WithRootFSPath(e.rootfs), oci.WithDefaultPathEnv,
		oci.WithProcessArgs(e.bin, "--bind", "127.0.0.1", "--port", "8000"))

	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed to run the agent in a network namespace: %v", err)
	}
	cmd := exec.Command(unshare, "--net", os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsChildEnv+"="+e.daemon.Address)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the agent in its own network namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the agent half did not run:\n%s", out)
	}
}

// agentInOwnNetns is the agent half: both containers ready, then ready and never
// restarted for 3 s more.
func agentInOwnNetns(t *testing.T, address string) {
	if n, err := os.Readlink("/proc/self/ns/net"); err == nil {
		t.Logf("agent in network namespace %s", n)
	}
	h := containerdAgent(t, &env{kind: "containerd", daemon: &ctrdtest.Daemon{Address: address}}, "", t.TempDir())
	for _, name := range []string{"hostnet", "podnet"} {
		h.waitFor(name, 20*time.Second, "ready", ready)
	}
	await.Holds(t, 3*time.Second, "both containers ready, never restarted", func() bool {
		for _, name := range []string{"hostnet", "podnet"} {
			if s, ok := h.a.Container(name); !ok || !s.Ready || s.RestartCount != 0 {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("%+v\nlogs:\n%s", h.a.Containers(), h.logTail()) })
}

// TestIntegrationContainerdOwnedContainerDeletedIsCreatedAgain: a container of the
// agent's service.json deleted behind its back (ctr t rm -f; ctr c rm) stays known and
// is created again, the restart counted under "deleted".
func TestIntegrationContainerdOwnedContainerDeletedIsCreatedAgain(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	client := e.daemon.Client(t)
	h := containerdAgent(t, e, `{"name":"model","rootfs":`+quote(e.rootfs)+`,"command":`+quote(e.bin+" --port 8000")+`,
		"readiness_check":{"http_get":{"path":"/health","port":8000},"period_seconds":0.1}}`, t.TempDir(),
		func(o *Options) { o.Backoff, o.BackoffMax = 3*time.Second, 10*time.Second })
	h.waitFor("model", 20*time.Second, "ready", ready)
	nctx := namespaces.WithNamespace(context.Background(), containerd.OwnedNamespace)
	removeTask := func() {
		c, err := client.LoadContainer(nctx, "model")
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(nctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := task.Delete(nctx, ctrd.WithProcessKill); err != nil {
			t.Fatal(err)
		}
	}
	// The first exit is restarted at once (a start that races the task's removal fails
	// and is retried, counted as start_failed); the second waits out a back-off of 3 s
	// or more, during which the container itself is deleted.
	removeTask()
	restarts := h.waitFor("model", 20*time.Second, "ready after the first restart", func(s ContainerStatus) bool { return s.Ready && s.RestartCount >= 1 }).RestartCount
	removeTask()
	h.waitFor("model", 5*time.Second, "in back-off", func(s ContainerStatus) bool { return s.State == StateBackoff })
	c, err := client.LoadContainer(nctx, "model")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(nctx, ctrd.WithSnapshotCleanup); err != nil {
		t.Fatal(err)
	}
	s := h.waitFor("model", 20*time.Second, "created again and ready", func(s ContainerStatus) bool { return s.Ready && s.RestartCount == restarts+1 })
	if s.State != StateRunning {
		t.Fatalf("status %+v", s)
	}
	if n := h.logs.FilterMessage("container deleted outside the agent; it is created again per its restart policy").Len(); n != 1 {
		t.Errorf("%d log lines for the deletion:\n%s", n, h.logTail())
	}
	if got, _ := metricValue(t, h, "probe_agent_container_restarts_total", map[string]string{"container": "model", "reason": "deleted"}); got != 1 {
		t.Errorf("restarts counted under deleted: %v, want 1", got)
	}
}

// TestIntegrationContainerdWorksWithoutAWritableStateDir: exec probes and restarts of
// the agent's own containers need no writable state dir (here a file is in its way):
// FIFOs live in the runtime dir, and a container whose log cannot be written still
// starts, its output discarded.
func TestIntegrationContainerdWorksWithoutAWritableStateDir(t *testing.T) {
	t.Parallel()
	e := containerdEnv(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(stateDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h := containerdAgent(t, e, `{"name":"model","rootfs":`+quote(e.rootfs)+`,"command":`+quote(e.bin+" --port 8000")+`,
		"readiness_check":{"http_get":{"path":"/health","port":8000},"period_seconds":0.2},
		"liveness_check":{"exec":{"command":["sh","-c","test -f /tmp/once || { touch /tmp/once; exit 1; }"]},"period_seconds":0.2}}`, stateDir)
	s := h.waitFor("model", 30*time.Second, "ready after the exec liveness probe restarted it once", func(s ContainerStatus) bool {
		return s.Ready && s.RestartCount == 1
	})
	if s.Probes["liveness"].ConsecutiveFailures != 0 || s.Probes["liveness"].Result != "success" {
		t.Fatalf("liveness %+v", s.Probes["liveness"])
	}
	if h.logs.FilterMessage("cannot write the container's log; its output is discarded").Len() == 0 {
		t.Errorf("no log line for the discarded output:\n%s", h.logTail())
	}
}
