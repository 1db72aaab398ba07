package deploy

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/metrics"
)

// fullNode is a GPU source whose one GPU reports every reading, so that the collector
// emits every GPU metric.
type fullNode struct {
	dev    gpu.Device
	events chan gpu.Event
}

func (n fullNode) Devices() []gpu.Device    { return []gpu.Device{n.dev} }
func (n fullNode) DriverVersion() string    { return "550.54.15" }
func (n fullNode) Events() <-chan gpu.Event { return n.events }
func (n fullNode) Close() error             { return nil }
func (n fullNode) Sample(context.Context) ([]gpu.Sample, error) {
	u32, u64 := gpu.Some[uint32], gpu.Some[uint64]
	return []gpu.Sample{{UUID: n.dev.UUID, At: time.Now(), TempC: u32(40), SlowdownTempC: u32(87), ShutdownTempC: u32(92),
		PowerMilliwatts: u32(70000), EnergyMillijoules: u64(1), MemUsedBytes: u64(1), MemTotalBytes: u64(2),
		UtilGPUPct: u32(1), UtilMemPct: u32(1), ECCUncorrVolatile: u64(0), ECCCorrVolatile: u64(0),
		ECCUncorrAggregate: u64(0), ECCCorrAggregate: u64(0), RemappedRowsCorr: gpu.Some(0), RemappedRowsUnc: gpu.Some(0),
		RemapPending: gpu.Some(false), RemapFailed: gpu.Some(false), RetiredPagesPending: gpu.Some(false),
		ClockEventReasons: u64(0), PCIeReplays: u64(0), RecoveryAction: u32(0),
		Errors: []gpu.CallError{{Call: "GetPowerUsage", Return: "ERROR_UNKNOWN"}}}}, nil
}

// agentMetrics is every metric name the agent exports (a histogram's as its _bucket,
// _sum and _count series), with every series populated once.
func agentMetrics(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New("test", func() float64 { return 0 })
	c := metrics.Container{Namespace: "ns", Pod: "p", Name: "c"}
	m.ProbeDone(c, "readiness", "http_get", "success", time.Millisecond)
	m.SetContainer(c, true, true, 0)
	m.SetChecksInvalid(c, false)
	m.Restarted(c, "liveness")
	m.Lateness(time.Millisecond)
	dev := gpu.Device{Index: 0, Minor: 0, UUID: "GPU-00000000-0000-0000-0000-000000000000", Name: "NVIDIA H100 80GB HBM3"}
	node := fullNode{dev: dev, events: make(chan gpu.Event, 1)}
	node.events <- gpu.Event{UUID: dev.UUID, Kind: gpu.EventXID, XID: 79, GI: gpu.NoInstance, CI: gpu.NoInstance}
	mon := gpu.NewMonitor(node, gpu.DefaultPolicy(), time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mon.Run(ctx); close(done) }()
	await.Until(t, 5*time.Second, "the monitor to take the XID", func() bool { return mon.Snapshot().GPUs[0].LastXID == 79 })
	cancel()
	<-done
	m.Registry.MustRegister(gpu.NewCollector(mon, func() []gpu.ContainerGPUs {
		return []gpu.ContainerGPUs{{Namespace: "ns", Pod: "p", Container: "c", GPUs: []gpu.Device{dev}, Healthy: true}}
	}))
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		names[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	return names
}

// fromPrometheus are series Prometheus makes itself.
var fromPrometheus = map[string]bool{"up": true}

// metricNames returns the metric names an expression selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Errorf("PromQL %q: %v", expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

func checkNames(t *testing.T, where, expr string, known map[string]bool, used map[string]bool) {
	t.Helper()
	for _, n := range metricNames(t, expr) {
		used[n] = true
		if !known[n] && !fromPrometheus[n] {
			t.Errorf("%s: %s is not a metric the agent exports", where, n)
		}
	}
}

func TestAlertRules(t *testing.T) {
	rule := find[*monitoringv1.PrometheusRule](t, rendered(t))
	b, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus's own rule-file validation: expressions, durations, templates.
	if _, errs := rulefmt.Parse(b, false, model.LegacyValidation, parser.NewParser(parser.Options{}), slog.Default()); len(errs) > 0 {
		t.Fatalf("rules: %v\n%s", errs, b)
	}
	known, used := agentMetrics(t), map[string]bool{}
	alerts := map[string]bool{}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			checkNames(t, "alert "+r.Alert, r.Expr.String(), known, used)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a severity, summary or description", r.Alert)
			}
		}
	}
	for _, want := range []string{"ProbeAgentDown", "ProbeAgentProbeErrorsRising", "ProbeAgentContainerRestartLoop",
		"ProbeAgentContainerNotReady", "ProbeAgentGPUUnhealthy", "ProbeAgentNVMLUnavailable"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
	promtoolTestRules(t, b, alerts)
}

// promtoolTestRules runs Prometheus's own rule unit tests, testdata/alerts_test.yaml,
// against the shipped rules, and checks that each alert has a case where it fires and
// one where it stays quiet.
func promtoolTestRules(t *testing.T, rules []byte, alerts map[string]bool) {
	t.Helper()
	promtool := need(t, "promtool")
	tests, err := os.ReadFile("testdata/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"rules.yaml": rules, "alerts_test.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "rules", "rules.yaml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	cmd = exec.Command(promtool, "test", "rules", "alerts_test.yaml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	var doc struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &doc); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range doc.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for a := range alerts {
		if !fires[a] {
			t.Errorf("testdata/alerts_test.yaml: no case where %s fires", a)
		}
		if !quiet[a] {
			t.Errorf("testdata/alerts_test.yaml: no case where %s stays quiet", a)
		}
	}
}

// need returns the path of a program the test needs; without it the test is skipped,
// or fails where CI is set.
func need(t *testing.T, program string) string {
	t.Helper()
	p, err := exec.LookPath(program)
	if err == nil {
		return p
	}
	msg := program + " is needed (apt-get install prometheus)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// dashboard is the part of Grafana's dashboard model the checks read.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// grafanaMacros stand in for what Grafana substitutes before a query reaches Prometheus.
var grafanaMacros = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$node", ".*")

func TestDashboard(t *testing.T) {
	const file = "kubernetes/dashboards/probe-agent.json"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: title %q uid %q, %d panels", file, d.Title, d.UID, len(d.Panels))
	}
	known, used := agentMetrics(t), map[string]bool{}
	ids := map[int]bool{}
	cells := map[[2]int]string{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: grid position %+v", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, taken := cells[[2]int{x, y}]; taken {
					t.Fatalf("panels %q and %q overlap", other, p.Title)
				}
				cells[[2]int{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %+v, %d targets; want the ${datasource} variable and a query", p.Title, p.Datasource, len(p.Targets))
		}
		for _, tg := range p.Targets {
			checkNames(t, "panel "+p.Title, grafanaMacros.Replace(tg.Expr), known, used)
		}
	}
	labelValues := regexp.MustCompile(`label_values\((\w+),`)
	for _, v := range d.Templating.List {
		if m := labelValues.FindSubmatch(v.Query); m != nil && !known[string(m[1])] {
			t.Errorf("variable %s queries %s, which the agent does not export", v.Name, m[1])
		}
	}
	for _, want := range []string{"probe_agent_probe_total", "probe_agent_probe_duration_seconds_bucket",
		"probe_agent_container_ready", "probe_agent_container_restarts_total", "probe_agent_container_backoff_seconds",
		"probe_agent_scheduler_lateness_seconds_bucket", "probe_agent_gpu_health_state", "probe_agent_gpu_temperature_celsius",
		"probe_agent_gpu_xid_errors_total"} {
		if !used[want] {
			t.Errorf("the dashboard shows nothing of %s", want)
		}
	}

	// kustomize ships the same JSON for Grafana's sidecar.
	cm := find[*corev1.ConfigMap](t, rendered(t))
	if cm.Data["probe-agent.json"] != string(b) || cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap %s: labels %v, data keys %d", cm.Name, cm.Labels, len(cm.Data))
	}
}
