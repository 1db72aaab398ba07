package agent

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// The probe semantics, each scenario on both runtimes (see runtimes in harness_test.go):
// exec, HTTP, TCP and gRPC checks, timeouts, startup gating and readiness.

func TestIntegrationExecLivenessRestartsWhenFileVanishes(t *testing.T) {
	execRuntimes(t, func(t *testing.T, e *env) {
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
	execRuntimes(t, func(t *testing.T, e *env) {
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

func TestIntegrationExecLivenessTimeoutRestarts(t *testing.T) {
	execRuntimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"liveness_check":{"exec":{"command":["sleep","10"]},"timeout_seconds":0.3,"period_seconds":0.5}}`)
		h.eventually(10*time.Second, "a restart", restarted)
		if out := h.transitionOutput("liveness"); !strings.Contains(out, "timed out") {
			t.Fatalf("the liveness failure does not say it timed out: %q", out)
		}
	})
}

func TestIntegrationExecReadinessTimeoutNeverReady(t *testing.T) {
	execRuntimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"c","command":"sleep 600",
			"readiness_check":{"exec":{"command":["sleep","10"]},"timeout_seconds":0.2,"period_seconds":0.3,"failure_threshold":1}}`)
		h.eventually(5*time.Second, "a probe", func(s ContainerStatus) bool { return s.Probes["readiness"].ConsecutiveFailures >= 2 })
		h.consistently(1500*time.Millisecond, "never ready, never restarted", func(s ContainerStatus) bool {
			return !s.Ready && notRestarted(s)
		})
	})
}

func TestIntegrationExecBackgroundChildFailsFast(t *testing.T) {
	execRuntimes(t, func(t *testing.T, e *env) {
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

// TestIntegrationSlowProbeDelaysNoOther: while one container's exec probe takes 5 s,
// another container's 0.5 s readiness probe keeps its cadence.
func TestIntegrationSlowProbeDelaysNoOther(t *testing.T) {
	runtimes(t, func(t *testing.T, e *env) {
		h := startAgent(t, e, `{"name":"slow","command":"sleep 600",
			"readiness_check":{"exec":{"command":["sleep","5"]},"timeout_seconds":8,"period_seconds":1}},
			{"name":"c","command":`+e.server()+`,"port":`+strconv.Itoa(e.port)+`,
			"readiness_check":{"http_get":{"path":"/health"},"period_seconds":0.5}}`)
		h.eventually(15*time.Second, "ready", ready)
		h.waitFor("slow", 10*time.Second, "its slow probe running", func(s ContainerStatus) bool { return s.State == StateRunning })
		// Every readiness result of c over 6 s, which covers a whole slow probe.
		seen := map[time.Time]bool{}
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			for _, r := range h.status("c").Probes["readiness"].History {
				seen[r.Time] = true
			}
		}
		times := slices.SortedFunc(maps.Keys(seen), time.Time.Compare)
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap > time.Second {
				t.Fatalf("c's 0.5 s readiness probe did not run for %v while another container's exec probe took 5 s", gap)
			}
		}
		if len(times) < 10 {
			t.Fatalf("%d readiness results in 6 s at a 0.5 s period", len(times))
		}
	})
}
