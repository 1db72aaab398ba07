package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
)

// The agent's pod as Kubernetes service discovery would describe it to Prometheus.
var agentPodMeta = map[string]string{
	"__meta_kubernetes_namespace":                                   "probe-agent",
	"__meta_kubernetes_service_name":                                "probe-agent",
	"__meta_kubernetes_service_label_app_kubernetes_io_name":        "probe-agent",
	"__meta_kubernetes_service_labelpresent_app_kubernetes_io_name": "true",
	"__meta_kubernetes_endpoint_port_name":                          "metrics",
	"__meta_kubernetes_endpoint_address_target_kind":                "Pod",
	"__meta_kubernetes_endpoint_address_target_name":                "probe-agent-x7k2p",
	"__meta_kubernetes_pod_name":                                    "probe-agent-x7k2p",
	"__meta_kubernetes_pod_container_name":                          "probe-agent",
	"__meta_kubernetes_pod_node_name":                               "node-1",
	"__meta_kubernetes_pod_phase":                                   "Running",
}

// scrapeConfig renders a ServiceMonitor endpoint as prometheus-operator does (its
// relabelling for the endpoints role: the selector and port kept, then namespace,
// service, pod, container, job and endpoint set from the discovered pod, then the
// endpoint's own relabelings, and its honorLabels), for one static target that carries
// the discovery labels of meta.
func scrapeConfig(sm *monitoringv1.ServiceMonitor, target string, meta map[string]string, interval string) map[string]any {
	ep := sm.Spec.Endpoints[0]
	rc := []map[string]any{
		{"source_labels": []string{"job"}, "target_label": "__tmp_prometheus_job_name"},
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		name := strings.NewReplacer(".", "_", "/", "_", "-", "_").Replace(k)
		rc = append(rc, map[string]any{"action": "keep",
			"source_labels": []string{"__meta_kubernetes_service_label_" + name, "__meta_kubernetes_service_labelpresent_" + name},
			"regex":         "(" + v + ");true"})
	}
	rc = append(rc,
		map[string]any{"action": "keep", "source_labels": []string{"__meta_kubernetes_endpoint_port_name"}, "regex": ep.Port},
		map[string]any{"source_labels": []string{"__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"},
			"separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"},
			"separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_namespace"}, "target_label": "namespace"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_service_name"}, "target_label": "service"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_pod_name"}, "target_label": "pod"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_pod_container_name"}, "target_label": "container"},
		map[string]any{"action": "drop", "source_labels": []string{"__meta_kubernetes_pod_phase"}, "regex": "(Failed|Succeeded)"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_service_name"}, "target_label": "job", "replacement": "${1}"},
		map[string]any{"target_label": "endpoint", "replacement": ep.Port},
	)
	for _, r := range ep.RelabelConfigs {
		m := map[string]any{}
		var src []string
		for _, l := range r.SourceLabels {
			src = append(src, string(l))
		}
		if len(src) > 0 {
			m["source_labels"] = src
		}
		if r.TargetLabel != "" {
			m["target_label"] = r.TargetLabel
		}
		if r.Regex != "" {
			m["regex"] = r.Regex
		}
		if r.Replacement != nil {
			m["replacement"] = *r.Replacement
		}
		if r.Separator != nil {
			m["separator"] = *r.Separator
		}
		if r.Action != "" {
			m["action"] = strings.ToLower(r.Action)
		}
		rc = append(rc, m)
	}
	return map[string]any{
		"job_name":        "serviceMonitor/" + sm.Namespace + "/" + sm.Name + "/0",
		"honor_labels":    ep.HonorLabels,
		"metrics_path":    ep.Path,
		"scrape_interval": interval,
		"static_configs":  []map[string]any{{"targets": []string{target}, "labels": meta}},
		"relabel_configs": rc,
	}
}

// startProcess runs a program until the test ends; its output is logged if the test
// fails.
func startProcess(t *testing.T, name string, args ...string) {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("%s:\n%s", name, b)
		}
	})
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query through Prometheus's HTTP API.
func query(t *testing.T, prom, q string) ([]sample, error) {
	t.Helper()
	resp, err := http.Get("http://" + prom + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", q, r.Error)
	}
	if r.Data.ResultType == "scalar" {
		return []sample{{}}, nil
	}
	var out []sample
	err = json.Unmarshal(r.Data.Result, &out)
	return out, err
}

// TestPrometheusScrapesTheAgentAsShipped scrapes a running agent with a real
// Prometheus, configured as prometheus-operator renders the shipped ServiceMonitor:
// the agent's labels arrive as it exports them, the first restart counts, and every
// query of the dashboard's panels (the GPU panels aside: no GPU here) returns data.
func TestPrometheusScrapesTheAgentAsShipped(t *testing.T) {
	prometheus := need(t, "prometheus")
	objs := rendered(t)
	sm := find[*monitoringv1.ServiceMonitor](t, objs)
	if sm.Namespace == "" {
		sm.Namespace = "probe-agent"
	}

	dir := t.TempDir()
	kill := filepath.Join(dir, "kill")
	cfg := filepath.Join(dir, "service.json")
	doc := fmt.Sprintf(`{"metadata":{"name":"prom"},"containers":[
		{"name":"model","command":"sleep 3600",
		 "liveness_check":{"exec":{"command":["sh","-c","test ! -e %s"]},"period_seconds":0.5},
		 "readiness_check":{"exec":{"command":["true"]},"period_seconds":0.5}},
		{"name":"unready","command":"sleep 3600","readiness_check":{"exec":{"command":["false"]},"period_seconds":0.5}},
		{"name":"crasher","command":"sh -c 'sleep 1; exit 1'"}]}`, kill)
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := testsock.FreeAddr(t)
	startProcess(t, agentBinary, "run", "--config", cfg, "--listen", agent, "--restart-backoff", "2s", "--gpu", "off")

	scrape := scrapeConfig(sm, agent, agentPodMeta, "1s")
	promCfg, err := yaml.Marshal(map[string]any{
		"global":         map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		"scrape_configs": []any{scrape},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), promCfg, 0o644); err != nil {
		t.Fatal(err)
	}
	prom := testsock.FreeAddr(t)
	startProcess(t, prometheus, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+prom, "--log.level=warn")

	var got []sample
	await.Until(t, 60*time.Second, "Prometheus scraping the agent", func() bool {
		got, err = query(t, prom, `up{job="probe-agent"} == 1`)
		return err == nil && len(got) == 1
	}, func() string { return fmt.Sprint(got, err, "\n", string(promCfg)) })

	// The labels arrive as the agent exports them: the probed container, not the
	// agent's own pod, under container; node from the relabelling; nothing exported_*.
	await.Until(t, 30*time.Second, "the containers' readiness", func() bool {
		got, err = query(t, prom, `probe_agent_container_ready`)
		return err == nil && len(got) == 3
	}, func() string { return fmt.Sprint(got, err) })
	for _, s := range got {
		for k := range s.Metric {
			if strings.HasPrefix(k, "exported_") {
				t.Errorf("%v: %s: the agent's label lost to the target's", s.Metric, k)
			}
		}
		if c := s.Metric["container"]; c != "model" && c != "unready" && c != "crasher" || s.Metric["node"] != "node-1" {
			t.Errorf("%v: want the probed container and node node-1", s.Metric)
		}
	}

	// A liveness failure restarts model; the restart is counted from 0, so
	// increase() sees it.
	await.Until(t, 30*time.Second, "model's restart counter at 0 in Prometheus", func() bool {
		got, err = query(t, prom, `probe_agent_container_restarts_total{container="model",reason="liveness"} == 0`)
		return err == nil && len(got) == 1
	}, func() string { return fmt.Sprint(got, err) })
	if err := os.WriteFile(kill, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	await.Until(t, 30*time.Second, "the restart counted", func() bool {
		got, err = query(t, prom, `probe_agent_container_restarts_total{container="model",reason="liveness"} >= 1`)
		return err == nil && len(got) == 1
	}, func() string { return fmt.Sprint(got, err) })
	if err := os.Remove(kill); err != nil {
		t.Fatal(err)
	}
	// The agent's exposition after the restart passes Prometheus's own linter.
	resp, err := http.Get("http://" + agent + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command(need(t, "promtool"), "check", "metrics")
	check.Stdin = resp.Body
	out, err := check.CombinedOutput()
	resp.Body.Close()
	if err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	b, err := os.ReadFile("kubernetes/dashboards/probe-agent.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	macros := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1s", "$__range", "5m", "$node", "node-1")
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "gpu") {
				continue // no GPU here
			}
			q := macros.Replace(tg.Expr)
			await.Until(t, 30*time.Second, fmt.Sprintf("data for panel %q", p.Title), func() bool {
				got, err = query(t, prom, q)
				return err == nil && len(got) > 0
			}, func() string { return fmt.Sprint(q, ": ", got, err) })
			if p.Title == "Restarts by reason" {
				found := false
				for _, s := range got {
					found = found || s.Metric["container"] == "model" && s.Metric["reason"] == "liveness"
				}
				if !found {
					t.Errorf("panel %q: %v; want model's liveness restart", p.Title, got)
				}
			}
		}
	}
}
