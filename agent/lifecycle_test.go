package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What the agent does about failures, each scenario on both runtimes: restarts with
// back-off, grace periods, restart policies, and the status API and metrics.

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
		h.waitFor("a", 5*time.Second, "Always restarting a clean exit", func(s ContainerStatus) bool { return s.RestartCount >= 1 })
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
