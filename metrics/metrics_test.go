package metrics

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsLintAndNames(t *testing.T) {
	t.Parallel()
	m := New("test", func() float64 { return 42 })
	c := Container{Name: "model"}
	m.ProbeDone(c, "liveness", "http_get", "success", 3*time.Millisecond)
	m.ProbeDone(c, "readiness", "exec", "failure", time.Second)
	m.Lateness(time.Millisecond)
	m.SetContainer(c, true, true, 20*time.Second)
	m.Restarted(c, "liveness")
	m.SetChecksInvalid(c, false)

	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	labels := map[string][]string{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "probe_agent_") {
			continue
		}
		names = append(names, mf.GetName())
		for _, l := range mf.GetMetric()[0].GetLabel() {
			labels[mf.GetName()] = append(labels[mf.GetName()], l.GetName())
		}
	}
	want := map[string][]string{
		"probe_agent_build_info":                 {"goversion", "version"},
		"probe_agent_container_backoff_seconds":  {"container", "namespace", "pod"},
		"probe_agent_container_ready":            {"container", "namespace", "pod"},
		"probe_agent_container_checks_invalid":   {"container", "namespace", "pod"},
		"probe_agent_container_restarts_total":   {"container", "namespace", "pod", "reason"},
		"probe_agent_container_started":          {"container", "namespace", "pod"},
		"probe_agent_probe_duration_seconds":     {"method", "probe_type"},
		"probe_agent_probe_total":                {"container", "method", "namespace", "pod", "probe_type", "result"},
		"probe_agent_scheduled_probes":           nil,
		"probe_agent_scheduler_lateness_seconds": nil,
	}
	if len(names) != len(want) {
		t.Fatalf("metrics %v", names)
	}
	for name, wl := range want {
		if got := labels[name]; !slices.Equal(got, wl) {
			t.Errorf("%s labels %v, want %v", name, got, wl)
		}
	}
	if v := testutil.ToFloat64(m.ready.WithLabelValues("", "", "model")); v != 1 {
		t.Errorf("ready = %v", v)
	}
	if v := testutil.ToFloat64(m.backoff.WithLabelValues("", "", "model")); v != 20 {
		t.Errorf("backoff = %v", v)
	}
}

func TestDeleteContainer(t *testing.T) {
	t.Parallel()
	m := New("test", func() float64 { return 0 })
	a, b := Container{Name: "a"}, Container{Name: "b"}
	for _, c := range []Container{a, b} {
		m.ProbeDone(c, "liveness", "tcp_socket", "success", time.Millisecond)
		m.SetContainer(c, true, true, 0)
		m.Restarted(c, "exited")
	}
	m.DeleteContainer(a)
	for name, n := range map[string]int{
		"probe_agent_probe_total": 1, "probe_agent_container_ready": 1, "probe_agent_container_started": 1,
		"probe_agent_container_restarts_total": 1, "probe_agent_container_backoff_seconds": 1,
	} {
		if got := testutil.CollectAndCount(m.Registry, name); got != n {
			t.Errorf("%s: %d series after delete, want %d", name, got, n)
		}
	}
}

func TestCountersStartAtZero(t *testing.T) {
	t.Parallel()
	m := New("test", func() float64 { return 0 })
	c := Container{Namespace: "ns", Pod: "p", Name: "model"}
	m.ContainerKnown(c, map[string]string{"liveness": "http_get", "readiness": "exec"})
	want := `
# HELP probe_agent_container_restarts_total Restarts by reason: liveness, startup (probe failures), exited, start_failed, deleted (a container of the agent's own deleted behind its back).
# TYPE probe_agent_container_restarts_total counter
probe_agent_container_restarts_total{container="model",namespace="ns",pod="p",reason="deleted"} 0
probe_agent_container_restarts_total{container="model",namespace="ns",pod="p",reason="exited"} 0
probe_agent_container_restarts_total{container="model",namespace="ns",pod="p",reason="liveness"} 1
probe_agent_container_restarts_total{container="model",namespace="ns",pod="p",reason="start_failed"} 0
probe_agent_container_restarts_total{container="model",namespace="ns",pod="p",reason="startup"} 0
# HELP probe_agent_probe_total Probes run, by container, probe type, method and result (success, failure, error).
# TYPE probe_agent_probe_total counter
probe_agent_probe_total{container="model",method="exec",namespace="ns",pod="p",probe_type="readiness",result="error"} 0
probe_agent_probe_total{container="model",method="exec",namespace="ns",pod="p",probe_type="readiness",result="failure"} 0
probe_agent_probe_total{container="model",method="exec",namespace="ns",pod="p",probe_type="readiness",result="success"} 0
probe_agent_probe_total{container="model",method="http_get",namespace="ns",pod="p",probe_type="liveness",result="error"} 0
probe_agent_probe_total{container="model",method="http_get",namespace="ns",pod="p",probe_type="liveness",result="failure"} 0
probe_agent_probe_total{container="model",method="http_get",namespace="ns",pod="p",probe_type="liveness",result="success"} 0
`
	m.Restarted(c, "liveness")
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "probe_agent_container_restarts_total", "probe_agent_probe_total"); err != nil {
		t.Fatal(err)
	}
}
