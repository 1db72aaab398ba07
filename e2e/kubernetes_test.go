package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/probe-agent/probe-agent/agent"
	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/gputest"
	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/kube"
	"github.com/probe-agent/probe-agent/metrics"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime/containerd"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

// runningAgent is the agent package with its containerd runtime and its Kubernetes
// side, authenticated as its ServiceAccount, talking to the API server through proxy.
type runningAgent struct {
	a      *agent.Agent
	kc     *kube.Client
	events *countedEvents
	logs   *observer.ObservedLogs
	writes *requestLog
	ups    *upLog
	stop   func()
}

// requestLog records the agent's requests that change something.
type requestLog struct {
	mu   sync.Mutex
	seen []string
	next http.RoundTripper
}

func (l *requestLog) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet {
		l.mu.Lock()
		l.seen = append(l.seen, r.Method+" "+r.URL.Path)
		l.mu.Unlock()
	}
	return l.next.RoundTrip(r)
}

func (l *requestLog) matching(s string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.seen {
		if strings.Contains(r, s) {
			out = append(out, r)
		}
	}
	return out
}

// countedEvents counts the events the agent asks its Kubernetes side for.
type countedEvents struct {
	*kube.Client
	mu sync.Mutex
	n  map[string]int // by namespace/pod reason
}

func (c *countedEvents) Event(namespace, pod, eventType, reason, action, note string) {
	c.mu.Lock()
	c.n[namespace+"/"+pod+" "+reason]++
	c.mu.Unlock()
	c.Client.Event(namespace, pod, eventType, reason, action, note)
}

func (c *countedEvents) count(p *testPod, reason string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[p.namespace+"/"+p.name+" "+reason]
}

// upLog records what the agent reported as probe_agent_kubernetes_up.
type upLog struct {
	mu  sync.Mutex
	seq []bool
	m   *metrics.Metrics
}

func (u *upLog) set(up bool) {
	u.mu.Lock()
	if n := len(u.seq); n == 0 || u.seq[n-1] != up {
		u.seq = append(u.seq, up)
	}
	u.mu.Unlock()
	u.m.KubernetesUp(up)
}

func (u *upLog) changes() []bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]bool(nil), u.seq...)
}

func startAgent(t *testing.T, n *node, cfg *rest.Config, via *proxy, stateDir string, src gpu.Source) *runningAgent {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	rt, err := containerd.New(containerd.Options{Address: n.daemon.Address, StateDir: stateDir, RuntimeDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cfg = rest.CopyConfig(cfg)
	u, _ := url.Parse(cfg.Host)
	u.Host = via.addr()
	cfg.Host = u.String()
	writes := &requestLog{}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { writes.next = rt; return writes }
	m := metrics.New("e2e", func() float64 { return 0 })
	m.EnableKubernetes()
	ups := &upLog{m: m}
	kc, err := kube.New(kube.Options{Config: cfg, NodeName: "node-1", Logger: log.Named("kube"), OnUp: ups.set,
		PingEvery: 500 * time.Millisecond, HeartbeatEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	counted := &countedEvents{Client: kc, n: map[string]int{}}
	opts := agent.Options{Runtime: rt, Logger: log, Metrics: m, Kubernetes: counted, StateDir: stateDir,
		Backoff: 200 * time.Millisecond, BackoffMax: 2 * time.Second, GracePeriod: agent.MinGracePeriod,
		Prober: prober.Options{Workers: 8}, GPUReadiness: true}
	if src != nil {
		opts.GPU = gpu.NewMonitor(src, gpu.DefaultPolicy(), 100*time.Millisecond, log)
	}
	a := agent.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = kc.Run(ctx); done <- struct{}{} }()
	go func() { _ = a.Run(ctx); done <- struct{}{} }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; <-done }) }
	t.Cleanup(stop)
	return &runningAgent{a: a, kc: kc, events: counted, logs: logs, writes: writes, ups: ups, stop: stop}
}

func (r *runningAgent) logTail() string {
	all := r.logs.All()
	var b strings.Builder
	for _, e := range all[max(0, len(all)-60):] {
		fmt.Fprintf(&b, "%s %s %v\n", e.Level, e.Message, e.ContextMap())
	}
	return b.String()
}

// gate returns the pod's gate condition as the API server has it.
func (cp *controlPlane) gate(t *testing.T, p *testPod) *corev1.PodCondition {
	t.Helper()
	pod, err := cp.client.CoreV1().Pods(p.namespace).Get(context.Background(), p.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return condition(pod, kube.DefaultGateCondition)
}

func (cp *controlPlane) awaitGate(t *testing.T, p *testPod, within time.Duration, status corev1.ConditionStatus, reason string, r *runningAgent) *corev1.PodCondition {
	t.Helper()
	var c *corev1.PodCondition
	await.Until(t, within, fmt.Sprintf("%s/%s's gate %s %s", p.namespace, p.name, status, reason), func() bool {
		c = cp.gate(t, p)
		return c != nil && c.Status == status && (reason == "" || c.Reason == reason)
	}, func() string { return fmt.Sprintf("condition %+v\nagent:\n%s", c, r.logTail()) })
	return c
}

// endpointReady is the ready condition of the pod's endpoint in its Service's slices.
func (cp *controlPlane) endpointReady(p *testPod) (ready, found bool) {
	slices, err := cp.client.DiscoveryV1().EndpointSlices(p.namespace).List(context.Background(),
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + p.name})
	if err != nil {
		return false, false
	}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.TargetRef != nil && e.TargetRef.Name == p.name {
				return e.Conditions.Ready != nil && *e.Conditions.Ready, true
			}
		}
	}
	return false, false
}

func (cp *controlPlane) service(t *testing.T, p *testPod) {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.namespace},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": p.name},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8000)}}}}
	if _, err := cp.client.CoreV1().Services(p.namespace).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (cp *controlPlane) awaitEndpoint(t *testing.T, p *testPod, ready bool) {
	t.Helper()
	await.Until(t, 15*time.Second, fmt.Sprintf("%s's endpoint ready=%v", p.name, ready), func() bool {
		r, ok := cp.endpointReady(p)
		return ok && r == ready
	})
}

// readinessChecks is a pod annotation whose readiness check passes while
// /state/ready exists.
const readinessChecks = `{"app":{"readiness_check":{"exec":{"command":["cat","/state/ready"]},"period_seconds":0.5,"failure_threshold":1}}}`

// TestKubernetes runs the agent against a real API server: readiness gates that follow
// probes and GPU health into the EndpointSlices, the node's GPU condition, Events, least
// privilege, API-server outages and agent restarts.
func TestKubernetes(t *testing.T) {
	ctrdtest.Require(t) // the pods' containers run on a private containerd, through CRI
	cp := startControlPlane(t)
	cp.runKubelet(t, "node-1")
	n := startNode(t)
	agentCfg := cp.agentConfig(t, "node-1")
	via := startProxy(t, strings.TrimPrefix(strings.TrimPrefix(cp.admin.Host, "https://"), "http://"))
	gpus := gputest.New(4)
	stateDir := t.TempDir()

	web := &testPod{namespace: "team-a", name: "web", gate: true, checks: readinessChecks,
		env: map[string]string{"NVIDIA_VISIBLE_DEVICES": gpus.UUID(1)}}
	plain := &testPod{namespace: "team-a", name: "plain", checks: readinessChecks}
	other := &testPod{namespace: "team-b", name: "elsewhere", gate: true}
	n.run(t, cp, web)
	n.run(t, cp, plain)
	cp.service(t, web)
	web.setReady(t, true)
	plain.setReady(t, true)
	otherPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: other.name, Namespace: "team-a"},
		Spec: corev1.PodSpec{NodeName: "node-2", AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "app", Image: busyboxImage}}}}
	otherPod, err := cp.client.CoreV1().Pods("team-a").Create(context.Background(), otherPod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agentClient := kubernetes.NewForConfigOrDie(agentCfg)
	cp.waitForPolicy(t, agentClient, otherPod)

	r := startAgent(t, n, agentCfg, via, stateDir, gpus)

	t.Run("readiness gate follows the readiness probe into the EndpointSlice", func(t *testing.T) {
		cp.awaitGate(t, web, 20*time.Second, corev1.ConditionTrue, kube.ReasonReady, r)
		cp.awaitEndpoint(t, web, true)
		start := time.Now()
		web.setReady(t, false)
		c := cp.awaitGate(t, web, 10*time.Second, corev1.ConditionFalse, kube.ReasonProbeFailed, r)
		// One period (0.5 s) to notice, plus one second.
		if took := time.Since(start); took > 1500*time.Millisecond {
			t.Errorf("the gate turned False %v after the probe started failing; want within one period + 1 s", took)
		}
		if !strings.Contains(c.Message, "container app") || !strings.Contains(c.Message, "readiness probe (exec)") {
			t.Errorf("message %q", c.Message)
		}
		cp.awaitEndpoint(t, web, false)
		web.setReady(t, true)
		cp.awaitGate(t, web, 10*time.Second, corev1.ConditionTrue, kube.ReasonReady, r)
		cp.awaitEndpoint(t, web, true)
	})

	t.Run("a GPU fault takes readiness away and sets the node condition", func(t *testing.T) {
		gpus.XID(1, 79)
		c := cp.awaitGate(t, web, 10*time.Second, corev1.ConditionFalse, kube.ReasonGPUUnhealthy, r)
		if !strings.Contains(c.Message, "XID 79") || !strings.Contains(c.Message, gpus.UUID(1)) {
			t.Errorf("message %q", c.Message)
		}
		cp.awaitNode(t, corev1.ConditionFalse, "GPUUnhealthy", "XID 79")
		cp.awaitEndpoint(t, web, false)
		gpus.Reset(1)
		cp.awaitGate(t, web, 10*time.Second, corev1.ConditionTrue, kube.ReasonReady, r)
		cp.awaitNode(t, corev1.ConditionTrue, "GPUsHealthy", "")
	})

	t.Run("a pod without the gate is never written to", func(t *testing.T) {
		if got := r.writes.matching("/pods/" + plain.name); len(got) != 0 {
			t.Fatalf("writes to a pod without the gate: %v", got)
		}
		if c := cp.gate(t, plain); c != nil {
			t.Fatalf("a pod without the gate got the condition %+v", c)
		}
	})

	t.Run("the agent's token is kept to its node, its condition and pods' status", func(t *testing.T) {
		ctx := context.Background()
		gate := []byte(`{"status":{"conditions":[{"type":"probe-agent.io/ready","status":"True"}]}}`)
		_, err := agentClient.CoreV1().Pods("team-a").Patch(ctx, otherPod.Name, types.StrategicMergePatchType, gate, metav1.PatchOptions{}, "status")
		forbidden(t, "the gate of a pod on node-2", err)
		ready := []byte(`{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Hijacked"}]}}`)
		_, err = agentClient.CoreV1().Pods("team-a").Patch(ctx, web.name, types.StrategicMergePatchType, ready, metav1.PatchOptions{}, "status")
		forbidden(t, "the pod's Ready condition", err)
		label := []byte(`{"metadata":{"labels":{"app":"hijacked"}}}`)
		_, err = agentClient.CoreV1().Pods("team-a").Patch(ctx, web.name, types.StrategicMergePatchType, label, metav1.PatchOptions{})
		forbidden(t, "the pod itself", err)
		node := []byte(`{"status":{"conditions":[{"type":"probe-agent.io/GPUHealthy","status":"True"}]}}`)
		_, err = agentClient.CoreV1().Nodes().Patch(ctx, "node-2", types.StrategicMergePatchType, node, metav1.PatchOptions{}, "status")
		forbidden(t, "another node's condition", err)
		_, err = agentClient.CoreV1().Pods("team-a").Patch(ctx, web.name, types.StrategicMergePatchType, gate, metav1.PatchOptions{}, "status")
		if err != nil {
			t.Errorf("its own gate on its own node's pod: %v", err)
		}
	})

	t.Run("twenty failing probes make one Unhealthy event", func(t *testing.T) {
		before, inAPI := r.events.count(web, "Unhealthy"), cp.occurrences(t, web, "Unhealthy", -1)
		web.setReady(t, false)
		await.Until(t, 30*time.Second, "twenty failed readiness probes", func() bool {
			s, ok := r.a.Container("team-a/web/app")
			return ok && s.Probes["readiness"].ConsecutiveFailures >= 20
		})
		if n := r.events.count(web, "Unhealthy") - before; n != 1 {
			t.Fatalf("%d Unhealthy events for 20 failed probes, one transition", n)
		}
		if got := cp.occurrences(t, web, "Unhealthy", inAPI+1); got != inAPI+1 {
			t.Errorf("Unhealthy events in the API server went from %d to %d, want one more", inAPI, got)
		}
		web.setReady(t, true)
		cp.awaitGate(t, web, 10*time.Second, corev1.ConditionTrue, kube.ReasonReady, r)
	})

	t.Run("an API server outage while the probe flips twice", func(t *testing.T) {
		via.block()
		await.Until(t, 10*time.Second, "kubernetes_up 0", func() bool { return !r.kc.Up() })
		web.setReady(t, false)
		await.Until(t, 5*time.Second, "the agent seeing the failure", func() bool { s, _ := r.a.Container("team-a/web/app"); return !s.Ready })
		web.setReady(t, true)
		await.Until(t, 5*time.Second, "the agent seeing the recovery", func() bool { s, _ := r.a.Container("team-a/web/app"); return s.Ready })
		web.setReady(t, false)
		await.Until(t, 5*time.Second, "the agent seeing the second failure", func() bool { s, _ := r.a.Container("team-a/web/app"); return !s.Ready })
		time.Sleep(10*time.Second - 3*time.Second) // the rest of a 10 s outage
		via.unblock()
		cp.awaitGate(t, web, 30*time.Second, corev1.ConditionFalse, kube.ReasonProbeFailed, r)
		await.Until(t, 5*time.Second, "probe_agent_kubernetes_up 0, then 1", func() bool {
			ups := r.ups.changes()
			return len(ups) >= 3 && !ups[len(ups)-2] && ups[len(ups)-1]
		}, func() string { return fmt.Sprint(r.ups.changes()) })
		web.setReady(t, true)
		cp.awaitGate(t, web, 10*time.Second, corev1.ConditionTrue, kube.ReasonReady, r)
	})

	t.Run("an agent restart never flips the condition", func(t *testing.T) {
		// Every state of the condition while the agent restarts, as a watch sees it.
		ctx, cancel := context.WithCancel(context.Background())
		w, err := cp.client.CoreV1().Pods(web.namespace).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + web.name})
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			for ev := range w.ResultChan() {
				if pod, ok := ev.Object.(*corev1.Pod); ok {
					if c := condition(pod, kube.DefaultGateCondition); c != nil {
						seen = append(seen, string(c.Status)+" "+c.Reason)
					}
				}
			}
		}()
		// The new agent starts while containerd is down, so it knows the pods (from
		// the API server) before it finds their containers: it must write nothing until
		// it has found them.
		r.stop()
		n.daemon.Kill()
		r = startAgent(t, n, agentCfg, via, stateDir, gpus)
		await.Until(t, 10*time.Second, "the new agent watching the node's pods", r.kc.Watching)
		time.Sleep(time.Second) // room for a wrong write to happen
		n.daemon.Restart()
		await.Until(t, 20*time.Second, "the new agent following the pod", func() bool {
			s, ok := r.a.Container("team-a/web/app")
			return ok && s.Ready && s.Probes["readiness"].ConsecutiveSuccesses >= 3
		})
		cancel()
		<-watched
		for _, s := range seen {
			if !strings.HasPrefix(s, "True ") {
				t.Fatalf("the condition went through %v during the agent restart", seen)
			}
		}
		if c := cp.gate(t, web); c == nil || c.Status != corev1.ConditionTrue {
			t.Fatalf("condition after the restart: %+v", c)
		}
	})
}

func forbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Errorf("the agent's token could write %s: %v", what, err)
	}
}

func (cp *controlPlane) awaitNode(t *testing.T, status corev1.ConditionStatus, reason, message string) {
	t.Helper()
	var got *corev1.NodeCondition
	await.Until(t, 10*time.Second, "node-1's GPU condition "+string(status), func() bool {
		node, err := cp.client.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
		if err != nil {
			return false
		}
		for i := range node.Status.Conditions {
			if string(node.Status.Conditions[i].Type) == kube.DefaultGPUCondition {
				got = &node.Status.Conditions[i]
			}
		}
		return got != nil && got.Status == status && got.Reason == reason && strings.Contains(got.Message, message)
	}, func() string { return fmt.Sprintf("%+v", got) })
}

// occurrences counts the events.k8s.io Events about a pod with a reason, a series
// counting as its count; with want >= 0 it waits (events arrive asynchronously) until
// the count reaches want or 5 s pass.
func (cp *controlPlane) occurrences(t *testing.T, p *testPod, reason string, want int) int {
	t.Helper()
	n := 0
	count := func() bool {
		list, err := cp.client.EventsV1().Events(p.namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		n = 0
		for _, e := range list.Items {
			if e.Regarding.Name == p.name && e.Reason == reason {
				if !strings.Contains(e.Note, "container app: readiness probe (exec) failed") {
					t.Errorf("event note %q", e.Note)
				}
				n++
				if e.Series != nil {
					n += int(e.Series.Count) - 1
				}
			}
		}
		return n >= want
	}
	if want < 0 {
		count()
		return n
	}
	await.Poll(5*time.Second, count)
	return n
}
