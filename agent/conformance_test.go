package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// freePort returns a port nothing listens on, never the same one twice in this test
// binary: the kernel may hand a port that was just closed to the next caller, and the
// parallel tests' servers must not meet.
func freePort(t *testing.T) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !ports[p] {
			ports[p] = true
			return p
		}
	}
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
		f(t, &env{kind: "process", dir: t.TempDir(), bin: sampleServer, port: freePort(t), grpcPort: freePort(t)})
	})
	t.Run("containerd", func(t *testing.T) {
		t.Parallel()
		ctrdtest.Require(t)
		containerdSlots <- struct{}{}
		t.Cleanup(func() { <-containerdSlots })
		f(t, newContainerdEnv(t))
	})
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
		rt, err = containerd.New(containerd.Options{Address: e.daemon.Address, Service: svc, StateDir: stateDir, Logger: log})
	} else {
		rt, err = process.New(svc, 2*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	return runAgent(t, Options{Runtime: rt, Logger: log, Backoff: 200 * time.Millisecond,
		BackoffMax: 2 * time.Second, GracePeriod: MinGracePeriod, Prober: prober.Options{Workers: 8}, StateDir: stateDir}, logs, tweak...)
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
	deadline := time.Now().Add(within)
	for {
		s, ok := h.a.Container("c")
		if ok && cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(s, "", " ")
			h.t.Fatalf("timed out waiting for %s; status:\n%s\nlogs:\n%s", what, b, h.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// consistently checks cond holds for the whole duration.
func (h *harness) consistently(d time.Duration, what string, cond func(ContainerStatus) bool) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if s, ok := h.a.Container("c"); ok && !cond(s) {
			b, _ := json.MarshalIndent(s, "", " ")
			h.t.Fatalf("%s did not hold; status:\n%s\nlogs:\n%s", what, b, h.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
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

func TestIntegrationExecLivenessRestartsWhenFileVanishes(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		f := e.dir + "/health"
		h := startAgent(t, e, `{"name":"c","command":`+quote("sh -c 'touch "+f+"; sleep 0.5; rm -f "+f+"; exec sleep 600'")+`,
			"liveness_check":{"exec":{"command":["cat",`+quote(f)+`]},"period_seconds":0.1}}`)
		s := h.eventually(10*time.Second, "a restart", restarted)
		if s.Probes["liveness"].Method != "exec" {
			t.Fatalf("method %q", s.Probes["liveness"].Method)
		}
		if h.logs.FilterMessage("stopping container, will be restarted").Len() == 0 {
			t.Fatal("no log line for the kill")
		}
	})
}

func TestIntegrationExecLivenessKeepsRunningWhileFileStays(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		f := e.dir + "/health"
		h := startAgent(t, e, `{"name":"c","command":`+quote("sh -c 'touch "+f+"; exec sleep 600'")+`,
			"liveness_check":{"exec":{"command":["cat",`+quote(f)+`]},"period_seconds":0.1,"initial_delay_seconds":0.2,"timeout_seconds":5}}`)
		h.eventually(5*time.Second, "a successful probe", func(s ContainerStatus) bool {
			return s.Probes["liveness"].ConsecutiveSuccesses >= 3
		})
		h.consistently(1500*time.Millisecond, "no restart", notRestarted)
	})
}

func TestIntegrationHTTPLivenessRestartsOn500(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		h := startAgent(t, e, `{"name":"c","command":`+e.server("--fail-after 0.5s")+`,"port":`+strconv.Itoa(p)+`,
			"liveness_check":{"http_get":{"path":"/health"},"period_seconds":0.1,"failure_threshold":2}}`)
		h.eventually(10*time.Second, "a restart", restarted)
		if out := h.transitionOutput("liveness"); !strings.Contains(out, "500") {
			t.Fatalf("no 500 in the liveness failure: %q", out)
		}
	})
}

func TestIntegrationHTTPLivenessKeepsRunningOn200(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		h := startAgent(t, e, `{"name":"c","command":`+e.server()+`,"port":`+strconv.Itoa(p)+`,
			"liveness_check":{"http_get":{"path":"/health"},"period_seconds":0.1,"initial_delay_seconds":0.5,"timeout_seconds":5}}`)
		h.eventually(5*time.Second, "successful probes", func(s ContainerStatus) bool {
			return s.Probes["liveness"].ConsecutiveSuccesses >= 3
		})
		h.consistently(1500*time.Millisecond, "no restart", notRestarted)
	})
}

func TestIntegrationTCPLivenessIgnoresHTTPErrors(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		h := startAgent(t, e, `{"name":"c","command":`+e.server("--failing")+`,"port":`+strconv.Itoa(p)+`,
			"liveness_check":{"tcp_socket":{},"period_seconds":0.1,"initial_delay_seconds":0.5,"timeout_seconds":5}}`)
		h.eventually(5*time.Second, "successful probes", func(s ContainerStatus) bool {
			return s.Probes["liveness"].ConsecutiveSuccesses >= 3
		})
		h.consistently(1500*time.Millisecond, "no restart", notRestarted)
	})
}

func TestIntegrationRestartCountMonotonicWithBackoff(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		h := startAgent(t, e, `{"name":"c","command":`+e.server("--failing")+`,"port":`+strconv.Itoa(p)+`,
			"liveness_check":{"http_get":{"path":"/health"},"period_seconds":0.05,"termination_grace_period_seconds":2}}`,
			func(o *Options) { o.Backoff = 400 * time.Millisecond; o.BackoffMax = 10 * time.Second })
		var at []time.Time
		last := 0
		deadline := time.Now().Add(30 * time.Second)
		for len(at) < 4 {
			s, _ := h.a.Container("c")
			if s.RestartCount < last {
				t.Fatalf("restart count went down from %d to %d", last, s.RestartCount)
			}
			if s.RestartCount > last {
				if s.RestartCount != last+1 {
					t.Fatalf("restart count jumped from %d to %d", last, s.RestartCount)
				}
				last = s.RestartCount
				at = append(at, time.Now())
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d restarts", len(at))
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Immediate first restart, then 0.4 s, 0.8 s, 1.6 s: each gap longer than the one
		// before (less a little for the polling that observes them).
		const slack = 50 * time.Millisecond
		g1, g2, g3 := at[1].Sub(at[0]), at[2].Sub(at[1]), at[3].Sub(at[2])
		if !(g1 >= 400*time.Millisecond-slack && g2 >= 800*time.Millisecond-slack && g3 >= 1600*time.Millisecond-slack && g2 > g1 && g3 > g2) {
			t.Fatalf("gaps between restarts %v %v %v do not show a doubling back-off", g1, g2, g3)
		}
		if n := h.logs.FilterMessage("back-off restarting container").Len(); n < 3 {
			t.Fatalf("%d back-off log lines", n)
		}
	})
}

func TestIntegrationExecLivenessTimeoutRestarts(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"liveness_check":{"exec":{"command":["sleep","10"]},"timeout_seconds":0.3,"period_seconds":0.5}}`)
		h.eventually(10*time.Second, "a restart", restarted)
		if out := h.transitionOutput("liveness"); !strings.Contains(out, "timed out") {
			t.Fatalf("the liveness failure does not say it timed out: %q", out)
		}
	})
}

func TestIntegrationExecReadinessTimeoutNeverReady(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"readiness_check":{"exec":{"command":["sleep","10"]},"timeout_seconds":0.2,"period_seconds":0.3,"failure_threshold":1}}`)
		h.eventually(5*time.Second, "a probe", func(s ContainerStatus) bool { return s.Probes["readiness"].ConsecutiveFailures >= 2 })
		h.consistently(1500*time.Millisecond, "never ready, never restarted", func(s ContainerStatus) bool {
			return !s.Ready && notRestarted(s)
		})
	})
}

func TestIntegrationExecBackgroundChildFailsFast(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"readiness_check":{"exec":{"command":["sh","-c","sleep 10 & exit 1"]},"timeout_seconds":5,"period_seconds":0.2}}`)
		s := h.eventually(5*time.Second, "failing probes", func(s ContainerStatus) bool {
			return s.Probes["readiness"].ConsecutiveFailures >= 2
		})
		for _, e := range s.Probes["readiness"].History {
			if e.Result != "failure" || e.Latency > 1 || !strings.Contains(e.Output, "exit code 1") {
				t.Fatalf("sleep 10 & exit 1 should fail fast: %+v", e)
			}
		}
	})
}

func TestIntegrationReadinessInitialDelay(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		start := time.Now()
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"readiness_check":{"exec":{"command":["true"]},"initial_delay_seconds":1.5,"period_seconds":10,"timeout_seconds":5}}`)
		h.consistently(time.Second-time.Since(start), "not ready before the initial delay", notReady)
		s := h.eventually(5*time.Second, "ready", ready)
		first := s.Probes["readiness"].History[0].Time
		if d := first.Sub(start); d < 1500*time.Millisecond || d > 3*time.Second {
			t.Fatalf("first readiness probe %v after start, want at the 1.5 s initial delay", d)
		}
		h.consistently(500*time.Millisecond, "no restart", notRestarted)
	})
}

func TestIntegrationFailingReadinessNeverReadyNeverRestarts(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"readiness_check":{"exec":{"command":["false"]},"period_seconds":0.1}}`)
		h.eventually(5*time.Second, "failures", func(s ContainerStatus) bool { return s.Probes["readiness"].ConsecutiveFailures >= 5 })
		h.consistently(1500*time.Millisecond, "never ready, never restarted", func(s ContainerStatus) bool {
			return !s.Ready && notRestarted(s)
		})
	})
}

func TestIntegrationFailingStartupRestartsDespiteLiveness(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"startup_check":{"exec":{"command":["false"]},"period_seconds":0.1,"failure_threshold":3},
			"liveness_check":{"exec":{"command":["true"]},"period_seconds":0.1,"timeout_seconds":5}}`)
		s := h.eventually(10*time.Second, "a restart", restarted)
		if s.Started {
			t.Fatal("started although startup never succeeded")
		}
		if h.logs.FilterField(zap.String("reason", "startup probe failed")).Len() == 0 {
			t.Fatal("kill not attributed to the startup probe")
		}
	})
}

func TestIntegrationStartupDelaysLivenessThenLivenessActs(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		f := e.dir + "/started"
		h := startAgent(t, e, `{"name":"c","command":`+quote("sh -c 'sleep 1; touch "+f+"; exec sleep 600'")+`,
			"startup_check":{"exec":{"command":["cat",`+quote(f)+`]},"period_seconds":0.1,"failure_threshold":100},
			"liveness_check":{"exec":{"command":["false"]},"period_seconds":0.1}}`)
		h.consistently(800*time.Millisecond, "liveness silent before startup", func(s ContainerStatus) bool {
			return !s.Started && notRestarted(s) && len(s.Probes["liveness"].History) == 0
		})
		h.eventually(10*time.Second, "a liveness restart after startup", restarted)
		var order []string
		for _, e := range h.logs.FilterMessage("probe transition").All() {
			m := e.ContextMap()
			order = append(order, fmt.Sprintf("%s:%s", m["probe"], m["to"]))
		}
		if len(order) < 2 || order[0] != "startup:success" || order[1] != "liveness:failure" {
			t.Fatalf("transitions %v, want startup success before the liveness failure", order)
		}
		if h.logs.FilterField(zap.String("reason", "liveness probe failed")).Len() == 0 {
			t.Fatal("restart not attributed to liveness")
		}
	})
}

func TestIntegrationReadinessRightAfterStartup(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		f := e.dir + "/started"
		h := startAgent(t, e, `{"name":"c","command":`+quote("sh -c 'sleep 0.5; touch "+f+"; exec sleep 600'")+`,
			"startup_check":{"exec":{"command":["cat",`+quote(f)+`]},"period_seconds":0.1,"failure_threshold":100},
			"readiness_check":{"exec":{"command":["true"]},"period_seconds":30,"timeout_seconds":5}}`)
		s := h.eventually(10*time.Second, "started", func(s ContainerStatus) bool { return s.Started })
		startupAt := *s.Probes["startup"].LastProbeTime
		s = h.eventually(5*time.Second, "ready", ready)
		if d := s.Probes["readiness"].LastProbeTime.Sub(startupAt); d > time.Second {
			t.Fatalf("ready %v after startup success, want within 1 s despite a 30 s period", d)
		}
	})
}

func TestIntegrationSameHostRedirectToFailureRestarts(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		h := startAgent(t, e, `{"name":"c","command":`+e.server()+`,"port":`+strconv.Itoa(p)+`,
			"liveness_check":{"http_get":{"path":"/redirect?to=/status/500"},"period_seconds":0.1,"initial_delay_seconds":0.3}}`)
		h.eventually(10*time.Second, "a restart", restarted)
	})
}

func TestIntegrationOtherHostRedirectIsSuccessWithWarning(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		to := "http://localhost:" + strconv.Itoa(p) + "/status/500"
		h := startAgent(t, e, `{"name":"c","command":`+e.server()+`,"port":`+strconv.Itoa(p)+`,
			"liveness_check":{"http_get":{"path":"/redirect?to=`+to+`"},"period_seconds":0.1,"initial_delay_seconds":0.3,"timeout_seconds":5}}`)
		s := h.eventually(5*time.Second, "warnings", func(s ContainerStatus) bool {
			return len(s.Probes["liveness"].History) >= 3
		})
		for _, e := range s.Probes["liveness"].History {
			if e.Result != "warning" {
				t.Fatalf("history %+v, want warnings", s.Probes["liveness"].History)
			}
		}
		h.consistently(time.Second, "no restart", notRestarted)
		if n := h.logs.FilterMessage("probe warning").Len(); n != 1 {
			t.Fatalf("%d warning log lines, want one for a repeated warning", n)
		}
	})
}

func TestIntegrationGRPCReadiness(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		g := strconv.Itoa(e.grpcPort)
		h := startAgent(t, e, `{"name":"c","command":`+e.server("--grpc-port "+g+" --fail-after 1.5s")+`,
			"readiness_check":{"grpc":{"port":`+g+`,"service":"model"},"period_seconds":0.1,"failure_threshold":1,"timeout_seconds":5}}`)
		h.eventually(10*time.Second, "ready over gRPC", ready)
		s := h.eventually(10*time.Second, "not ready once NOT_SERVING", notReady)
		if out := s.Probes["readiness"].LastOutput; !strings.Contains(out, "NOT_SERVING") {
			t.Fatalf("readiness output %q", out)
		}
		if s.RestartCount != 0 {
			t.Fatal("a readiness failure restarted the container")
		}
	})
}

func TestIntegrationProbeGracePeriodOverridesDefault(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		f := e.dir + "/health"
		// The container ignores SIGTERM, so only SIGKILL after the grace period ends it.
		h := startAgent(t, e, `{"name":"c","command":`+quote("sh -c 'trap \"\" TERM; touch "+f+"; sleep 0.5; rm "+f+"; while true; do sleep 0.1; done'")+`,
			"liveness_check":{"exec":{"command":["cat",`+quote(f)+`]},"period_seconds":0.1,"termination_grace_period_seconds":2}}`,
			func(o *Options) { o.GracePeriod = 10 * time.Second })
		h.eventually(10*time.Second, "terminating", func(s ContainerStatus) bool { return s.State == StateTerminating })
		began := time.Now()
		s := h.eventually(15*time.Second, "a restart", restarted)
		took := time.Since(began)
		if took < 1500*time.Millisecond || took > 6*time.Second {
			t.Fatalf("kill took %v; want the probe's 2 s grace, not the 10 s default", took)
		}
		if s.LastExitCode == nil || *s.LastExitCode != 137 {
			t.Fatalf("last exit code %v, want 137 (SIGKILL)", s.LastExitCode)
		}
	})
}

func TestIntegrationNotReadyWhileTerminating(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		f := e.dir + "/health"
		h := startAgent(t, e, `{"name":"c","command":`+quote("sh -c 'trap \"\" TERM; touch "+f+"; sleep 1; rm "+f+"; while true; do sleep 0.1; done'")+`,
			"readiness_check":{"exec":{"command":["true"]},"period_seconds":0.1,"timeout_seconds":5},
			"liveness_check":{"exec":{"command":["cat",`+quote(f)+`]},"period_seconds":0.1,"termination_grace_period_seconds":2}}`)
		h.eventually(5*time.Second, "ready", ready)
		h.eventually(10*time.Second, "terminating", func(s ContainerStatus) bool { return s.State == StateTerminating })
		h.consistently(time.Second, "not ready while terminating", func(s ContainerStatus) bool {
			return s.State != StateTerminating || !s.Ready
		})
	})
}

func TestIntegrationStartFailureIsVisibleAndRetried(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"/nonexistent/model-server --port 8000"}`)
		s := h.eventually(5*time.Second, "a retry", func(s ContainerStatus) bool { return s.RestartCount >= 2 })
		if s.State != StateError && s.State != StateBackoff {
			t.Fatalf("state %q", s.State)
		}
		if !strings.Contains(s.Message, "no such file") && !strings.Contains(s.Message, "back-off") {
			t.Fatalf("message %q does not say why", s.Message)
		}
		if h.logs.FilterMessage("container could not start").Len() == 0 {
			t.Fatal("no log line for the start failure")
		}
	})
}

func TestIntegrationRestartPolicyNeverAndOnFailure(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sh -c 'exit 0'","restart_policy":"OnFailure"},
			{"name":"n","command":"sh -c 'exit 3'","restart_policy":"Never"},
			{"name":"a","command":"sh -c 'sleep 0.2; exit 0'","restart_policy":"Always"}`)
		h.eventually(5*time.Second, "exited", func(s ContainerStatus) bool { return s.State == StateExited })
		deadline := time.Now().Add(5 * time.Second)
		for {
			a, _ := h.a.Container("a")
			if a.RestartCount >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("Always did not restart a clean exit")
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		for name, code := range map[string]int{"c": 0, "n": 3} {
			s := h.status(name)
			if s.RestartCount != 0 || s.State != StateExited || s.LastExitCode == nil || *s.LastExitCode != code {
				t.Fatalf("%s: %+v", name, s)
			}
		}
	})
}

// TestIntegrationProcessStatusAPIAndMetrics reads the HTTP interface as an operator does.
func TestIntegrationStatusAPIAndMetrics(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		p := e.port
		h := startAgent(t, e, `{"name":"c","command":`+e.server()+`,"port":`+strconv.Itoa(p)+`,
			"startup_check":{"tcp_socket":{},"period_seconds":0.1,"failure_threshold":50},
			"readiness_check":{"http_get":{"path":"/health"},"period_seconds":0.2},
			"liveness_check":{"exec":{"command":[`+quote(e.bin)+`,"check","--url","http://127.0.0.1:`+strconv.Itoa(p)+`/health"]},"period_seconds":0.2}}`)
		h.eventually(10*time.Second, "ready and live", func(s ContainerStatus) bool {
			return s.Ready && s.Probes["liveness"].ConsecutiveSuccesses > 0
		})
		srv := httptest.NewServer(h.a.Handler(h.m.Registry))
		defer srv.Close()
		get := func(path string) (int, string) {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		code, body := get("/v1/containers")
		var list []map[string]any
		if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list) != 1 {
			t.Fatalf("/v1/containers: %d %v %s", code, err, body)
		}
		wantKeys := []string{"id", "last_exit_code", "name", "pid", "probes", "ready", "restart_count", "started", "state"}
		for _, k := range wantKeys {
			if _, ok := list[0][k]; !ok {
				t.Errorf("container JSON lacks %q: %s", k, body)
			}
		}
		probes := list[0]["probes"].(map[string]any)
		for _, pt := range []string{"liveness", "readiness", "startup"} {
			pr, ok := probes[pt].(map[string]any)
			if !ok {
				t.Fatalf("probes.%s missing", pt)
			}
			for _, k := range []string{"method", "result", "consecutive_successes", "consecutive_failures", "last_output", "last_probe_time", "history"} {
				if _, ok := pr[k]; !ok {
					t.Errorf("probes.%s lacks %q", pt, k)
				}
			}
		}
		if code, body := get("/v1/containers/c"); code != 200 || !strings.Contains(body, `"ready": true`) {
			t.Fatalf("/v1/containers/c: %d %s", code, body)
		}
		if code, _ := get("/v1/containers/nope"); code != 404 {
			t.Fatalf("unknown container: %d", code)
		}
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body := get(path); code != 200 || body != "ok\n" {
				t.Fatalf("%s: %d %q", path, code, body)
			}
		}
		_, body = get("/metrics")
		for _, want := range []string{
			`probe_agent_container_ready{container="c",namespace="",pod=""} 1`,
			`probe_agent_container_started{container="c",namespace="",pod=""} 1`,
			`probe_agent_probe_total{container="c",method="http_get",namespace="",pod="",probe_type="readiness",result="success"}`,
			`probe_agent_probe_total{container="c",method="exec",namespace="",pod="",probe_type="liveness",result="success"}`,
			`probe_agent_probe_duration_seconds_bucket{method="tcp_socket",probe_type="startup"`,
			`probe_agent_scheduler_lateness_seconds_count`,
			`probe_agent_scheduled_probes `,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		// A transition is logged once, with its counts; successful probes are not logged.
		trs := h.logs.FilterMessage("probe transition").All()
		if len(trs) != 2 {
			t.Fatalf("%d transition log lines, want startup and readiness", len(trs))
		}
		for _, e := range trs {
			m := e.ContextMap()
			if m["consecutive"] == nil || m["threshold"] == nil || m["container"] != "c" {
				t.Fatalf("transition log fields %v", m)
			}
		}
	})
}
