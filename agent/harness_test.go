package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
	"github.com/probe-agent/probe-agent/metrics"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/runtime/containerd"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
	"github.com/probe-agent/probe-agent/runtime/process"
	"github.com/probe-agent/probe-agent/service"
)

// sampleServer is the repository's sample model server, built once for these tests.
var sampleServer string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "probe-agent-test")
	if err != nil {
		panic(err)
	}
	sampleServer = filepath.Join(dir, "sample-server")
	if out, err := exec.Command("go", "build", "-o", sampleServer, "../cmd/sample-server").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the sample server: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

type harness struct {
	t    *testing.T
	a    *Agent
	logs *observer.ObservedLogs
	m    *metrics.Metrics
	stop func() // stops the agent and waits; safe to call twice
}

// env is one runtime the conformance cases run on, with paths as the container sees
// them: the process runtime runs on the host; the containerd runtime runs each test's
// containers from its own rootfs under a private containerd.
type env struct {
	kind     string
	dir      string // a directory for the container's files
	bin      string // the sample server
	port     int
	grpcPort int
	rootfs   string
	daemon   *ctrdtest.Daemon
	noRunner bool     // containerd: every exec probe through containerd exec (--exec-runner=off)
	h        *harness // the agent startAgent ran
}

// server is the command line of a sample server on the env's port.
func (e *env) server(args ...string) string {
	bind := "0.0.0.0"
	if e.kind == "process" {
		bind = "127.0.0.1" // shared host network: stay on loopback
	}
	return quote(e.bin + " --bind " + bind + " --port " + strconv.Itoa(e.port) + " " + strings.Join(args, " "))
}

// containerdSlots bounds how many private containerd daemons run at once.
var containerdSlots = make(chan struct{}, 3)

// runtimes runs a conformance case on the process runtime and on the containerd runtime.
func runtimes(t *testing.T, f func(t *testing.T, e *env)) {
	t.Run("process", func(t *testing.T) {
		t.Parallel()
		f(t, &env{kind: "process", dir: t.TempDir(), bin: sampleServer, port: testsock.FreePort(t), grpcPort: testsock.FreePort(t)})
	})
	onContainerd(t, "containerd", false, f)
}

// onContainerd runs a case on a private containerd, with the exec runner off when
// noRunner; at most len(containerdSlots) at once.
func onContainerd(t *testing.T, name string, noRunner bool, f func(t *testing.T, e *env)) {
	t.Run(name, func(t *testing.T) {
		t.Parallel()
		ctrdtest.Require(t)
		containerdSlots <- struct{}{}
		t.Cleanup(func() { <-containerdSlots })
		e := newContainerdEnv(t)
		e.noRunner = noRunner
		f(t, e)
	})
}

// execRuntimes runs an exec case as runtimes does, and once more on containerd with the
// exec runner off; on containerd it checks that the probes took the path meant.
func execRuntimes(t *testing.T, f func(t *testing.T, e *env)) {
	runtimes(t, func(t *testing.T, e *env) {
		f(t, e)
		checkExecPaths(t, e)
	})
	onContainerd(t, "containerd-exec", true, func(t *testing.T, e *env) {
		f(t, e)
		checkExecPaths(t, e)
	})
}

// checkExecPaths checks probe_agent_exec_path_total: with the runner on, probes ran on
// it; with it off, none did.
func checkExecPaths(t *testing.T, e *env) {
	t.Helper()
	if e.kind != "containerd" || e.h == nil {
		return
	}
	runner, _ := metricValue(t, e.h, "probe_agent_exec_path_total", map[string]string{"path": "runner"})
	plain, _ := metricValue(t, e.h, "probe_agent_exec_path_total", map[string]string{"path": "exec"})
	t.Logf("exec probes: %v on the runner, %v through containerd exec", runner, plain)
	if (e.noRunner && (runner != 0 || plain == 0)) || (!e.noRunner && runner == 0) {
		t.Errorf("exec paths: runner %v, exec %v (runner off: %v)", runner, plain, e.noRunner)
	}
}

func newContainerdEnv(t *testing.T) *env {
	t.Helper()
	d := ctrdtest.Start(t)
	bin := ctrdtest.BuildStatic(t, "cmd/sample-server")
	return &env{kind: "containerd", dir: "/tmp", bin: "/bin/" + filepath.Base(bin), port: 8000, grpcPort: 9000,
		rootfs: ctrdtest.Rootfs(t, bin), daemon: d}
}

// startAgent runs an agent for a service.json whose containers array is given; on
// containerd every container runs from the env's rootfs. Back-off starts at 200 ms so
// that restarts come quickly.
func startAgent(t *testing.T, e *env, containers string, tweak ...func(*Options)) *harness {
	t.Helper()
	if e.kind == "containerd" {
		var list []map[string]any
		if err := json.Unmarshal([]byte("["+containers+"]"), &list); err != nil {
			t.Fatalf("containers: %v", err)
		}
		for _, c := range list {
			c["rootfs"] = e.rootfs
		}
		b, _ := json.Marshal(list)
		containers = strings.TrimSuffix(strings.TrimPrefix(string(b), "["), "]")
	}
	doc := `{"metadata":{"name":"conformance"},"containers":[` + containers + `]}`
	svc, err := service.Parse([]byte(doc), service.Options{})
	if err != nil {
		t.Fatalf("service: %v\n%s", err, doc)
	}
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	var rt runtime.Runtime
	stateDir := ""
	if e.kind == "containerd" {
		stateDir = t.TempDir()
		rt, err = containerd.New(containerd.Options{Address: e.daemon.Address, Service: svc, StateDir: stateDir, RuntimeDir: t.TempDir(),
			NoExecRunner: e.noRunner, Logger: log})
	} else {
		rt, err = process.New(svc, process.Options{ShutdownGrace: 2 * time.Second, Logger: log})
	}
	if err != nil {
		t.Fatal(err)
	}
	e.h = runAgent(t, Options{Runtime: rt, Logger: log, Backoff: 200 * time.Millisecond,
		BackoffMax: 2 * time.Second, GracePeriod: MinGracePeriod, Prober: prober.Options{Workers: 8}, StateDir: stateDir}, logs, tweak...)
	return e.h
}

// runAgent runs an agent until the test ends.
func runAgent(t *testing.T, opts Options, logs *observer.ObservedLogs, tweak ...func(*Options)) *harness {
	t.Helper()
	var a *Agent
	m := metrics.New("test", func() float64 { return float64(a.Manager().Scheduled()) })
	opts.Metrics = m
	for _, f := range tweak {
		f(&opts)
	}
	a = New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("agent: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("agent did not shut down")
			}
		})
	}
	t.Cleanup(stop)
	return &harness{t: t, a: a, logs: logs, m: m, stop: stop}
}

func (h *harness) status(name string) ContainerStatus {
	h.t.Helper()
	s, ok := h.a.Container(name)
	if !ok {
		h.t.Fatalf("container %s unknown", name)
	}
	return s
}

// eventually polls cond until it holds or the deadline passes.
func (h *harness) eventually(within time.Duration, what string, cond func(ContainerStatus) bool) ContainerStatus {
	h.t.Helper()
	return h.waitFor("c", within, what, cond)
}

// waitFor polls container name's status until cond holds or within passes.
func (h *harness) waitFor(name string, within time.Duration, what string, cond func(ContainerStatus) bool) ContainerStatus {
	h.t.Helper()
	var s ContainerStatus
	await.Until(h.t, within, what+" of "+name, func() bool {
		var ok bool
		s, ok = h.a.Container(name)
		return ok && cond(s)
	}, func() string { return h.explain(s) })
	return s
}

// consistently checks cond holds for the whole duration.
func (h *harness) consistently(d time.Duration, what string, cond func(ContainerStatus) bool) {
	h.t.Helper()
	var s ContainerStatus
	await.Holds(h.t, d, what, func() bool {
		var ok bool
		s, ok = h.a.Container("c")
		return !ok || cond(s)
	}, func() string { return h.explain(s) })
}

// explain formats a status and the last log lines for a failure message.
func (h *harness) explain(s ContainerStatus) string {
	b, _ := json.MarshalIndent(s, "", " ")
	return "status:\n" + string(b) + "\nlogs:\n" + h.logTail()
}

// logTail formats the last log lines for a failure message, enough to see what led there.
func (h *harness) logTail() string {
	all := h.logs.All()
	var b strings.Builder
	for _, e := range all[max(0, len(all)-150):] {
		fmt.Fprintf(&b, "%s %s %v\n", e.Level, e.Message, e.ContextMap())
	}
	return b.String()
}

// transitionOutput returns the output logged with the first transition of a probe type.
func (h *harness) transitionOutput(probe string) string {
	for _, e := range h.logs.FilterMessage("probe transition").All() {
		if m := e.ContextMap(); m["probe"] == probe {
			return fmt.Sprint(m["output"])
		}
	}
	return ""
}

func restarted(s ContainerStatus) bool { return s.RestartCount > 0 }
func notRestarted(s ContainerStatus) bool {
	return s.RestartCount == 0 && s.State != StateTerminating && s.State != StateExited
}
func ready(s ContainerStatus) bool    { return s.Ready }
func notReady(s ContainerStatus) bool { return !s.Ready }

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }
