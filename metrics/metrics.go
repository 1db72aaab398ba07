// Package metrics defines every Prometheus metric the agent exports, in one place.
// Per-container series carry namespace, pod and container labels (namespace and pod
// are empty outside Kubernetes) and are deleted when the container goes away.
//
// The GPU metrics (probe_agent_gpu_* and probe_agent_container_gpu_*) are the one
// exception: they are read from the GPU monitor's state at each scrape by a custom
// collector, gpu.Collector (gpu/metrics.go), which the agent's command registers on
// this package's Registry.
package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "probe_agent"

// Metrics holds the agent's collectors and the registry they are registered in.
type Metrics struct {
	Registry *prometheus.Registry

	probeTotal    *prometheus.CounterVec
	probeDuration *prometheus.HistogramVec
	ready         *prometheus.GaugeVec
	started       *prometheus.GaugeVec
	restarts      *prometheus.CounterVec
	backoff       *prometheus.GaugeVec
	invalid       *prometheus.GaugeVec
	lateness      prometheus.Histogram
	kubernetesUp  prometheus.Gauge
	execPath      *prometheus.CounterVec
}

var containerLabels = []string{"namespace", "pod", "container"}

func withContainer(extra ...string) []string {
	return append(append([]string(nil), containerLabels...), extra...)
}

// New registers the agent's metrics, plus the Go and process collectors, in a new
// registry. scheduled reports how many probes wait on the scheduler.
func New(version string, scheduled func() float64) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		probeTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "probe_total",
			Help: "Probes run, by container, probe type, method and result (success, failure, error).",
		}, withContainer("probe_type", "method", "result")),
		probeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "probe_duration_seconds",
			Help:    "Duration of probes by probe type and method, failures included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"probe_type", "method"}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "container_ready",
			Help: "Whether the container is ready (1) or not (0).",
		}, containerLabels),
		started: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "container_started",
			Help: "Whether the container's startup check has succeeded (1) or not (0).",
		}, containerLabels),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "container_restarts_total",
			Help: "Restarts by reason: liveness, startup (probe failures), exited, start_failed, deleted (a container of the agent's own deleted behind its back).",
		}, withContainer("reason")),
		backoff: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "container_backoff_seconds",
			Help: "Current restart back-off of the container; 0 when none applies.",
		}, containerLabels),
		invalid: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "container_checks_invalid",
			Help: "1 while the container's checks (label or annotation) cannot be used; the status API says why.",
		}, containerLabels),
		lateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "scheduler_lateness_seconds",
			Help:    "How long after its due time each probe started running (queueing for a free worker included).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 15),
		}),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Build information of the agent; always 1.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	m.Registry.MustRegister(m.probeTotal, m.probeDuration, m.ready, m.started, m.restarts, m.backoff, m.invalid, m.lateness, buildInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "scheduled_probes",
			Help: "Probes waiting on the scheduler's timer wheel.",
		}, scheduled),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// EnableKubernetes registers probe_agent_kubernetes_up, which exists only where the
// agent talks to an API server.
func (m *Metrics) EnableKubernetes() {
	m.kubernetesUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "kubernetes_up",
		Help: "Whether the API server answered the agent's last request (1) or not (0); readiness gates, events and the node condition wait for it.",
	})
	m.Registry.MustRegister(m.kubernetesUp)
}

// KubernetesUp records whether the API server answered.
func (m *Metrics) KubernetesUp(up bool) {
	if m.kubernetesUp != nil {
		m.kubernetesUp.Set(b2f(up))
	}
}

// EnableExecPaths registers probe_agent_exec_path_total, which exists where the runtime
// can run exec probes two ways (containerd), with both series at 0.
func (m *Metrics) EnableExecPaths() {
	m.execPath = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "exec_path_total",
		Help: "Exec probes by the path they took: runner (forked by the agent's runner in the container) or exec (one containerd exec each).",
	}, []string{"path"})
	m.execPath.WithLabelValues("runner").Add(0)
	m.execPath.WithLabelValues("exec").Add(0)
	m.Registry.MustRegister(m.execPath)
}

// ExecPath counts one exec probe by its path, "runner" or "exec".
func (m *Metrics) ExecPath(path string) {
	if m.execPath != nil {
		m.execPath.WithLabelValues(path).Inc()
	}
}

// Container names a container's series.
type Container struct{ Namespace, Pod, Name string }

func (c Container) labels(extra ...string) []string {
	return append([]string{c.Namespace, c.Pod, c.Name}, extra...)
}

// ProbeDone counts one probe result and observes its duration.
func (m *Metrics) ProbeDone(c Container, probeType, method, result string, d time.Duration) {
	m.probeTotal.WithLabelValues(c.labels(probeType, method, result)...).Inc()
	m.probeDuration.WithLabelValues(probeType, method).Observe(d.Seconds())
}

// Lateness observes how long after its due time a probe started running.
func (m *Metrics) Lateness(d time.Duration) { m.lateness.Observe(max(d, 0).Seconds()) }

// SetContainer sets a container's ready and started gauges and its back-off.
func (m *Metrics) SetContainer(c Container, ready, started bool, backoff time.Duration) {
	m.ready.WithLabelValues(c.labels()...).Set(b2f(ready))
	m.started.WithLabelValues(c.labels()...).Set(b2f(started))
	m.backoff.WithLabelValues(c.labels()...).Set(backoff.Seconds())
}

// SetChecksInvalid says whether a container's checks are unusable.
func (m *Metrics) SetChecksInvalid(c Container, invalid bool) {
	m.invalid.WithLabelValues(c.labels()...).Set(b2f(invalid))
}

// RestartReasons are the reasons restarts are counted under.
var RestartReasons = []string{"liveness", "startup", "exited", "start_failed", "deleted"}

// ProbeResults are the results probes are counted under.
var ProbeResults = []string{"success", "failure", "error"}

// ContainerKnown creates, at 0, every counter series the agent will use for a
// container: its restarts by each reason, and its probes (probe type to method) by
// each result. A counter that appears only at its first event hides that event from
// increase() and rate(): the first restart would never count.
func (m *Metrics) ContainerKnown(c Container, probes map[string]string) {
	for _, r := range RestartReasons {
		m.restarts.WithLabelValues(c.labels(r)...).Add(0)
	}
	for probeType, method := range probes {
		for _, r := range ProbeResults {
			m.probeTotal.WithLabelValues(c.labels(probeType, method, r)...).Add(0)
		}
	}
}

// Restarted counts a restart of the container for reason.
func (m *Metrics) Restarted(c Container, reason string) {
	m.restarts.WithLabelValues(c.labels(reason)...).Inc()
}

// DeleteContainer removes every series of a container that is gone.
func (m *Metrics) DeleteContainer(c Container) {
	l := prometheus.Labels{"namespace": c.Namespace, "pod": c.Pod, "container": c.Name}
	m.probeTotal.DeletePartialMatch(l)
	m.ready.DeletePartialMatch(l)
	m.started.DeletePartialMatch(l)
	m.restarts.DeletePartialMatch(l)
	m.backoff.DeletePartialMatch(l)
	m.invalid.DeletePartialMatch(l)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
