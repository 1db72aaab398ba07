package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentapi "github.com/probe-agent/probe-agent/agent"
	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testproc"
	"github.com/probe-agent/probe-agent/internal/testsock"
	"github.com/probe-agent/probe-agent/kube"
)

// kubernetesServiceIP is the first address of the API server's default service range.
const kubernetesServiceIP = "10.0.0.1"

// TestNode runs the real thing on one machine: a kubelet on a private containerd with
// CRI and bridge CNI, probe-agent deployed from deploy/kubernetes as shipped (its
// ServiceAccount, RBAC, admission policy, hostPID, its own pod network, capabilities and
// mounts), and pods that opt in to its readiness gate.
func TestNode(t *testing.T) {
	requireNode(t)
	kubelet := buildKubelet(t)
	tokens := filepath.Join(t.TempDir(), "tokens.csv")
	if err := os.WriteFile(tokens, []byte(kubeletTok+",system:node:"+nodeName+",node-1,\"system:nodes\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ip := nodeIP(t)
	cp := startControlPlaneWith(t, []string{"--token-auth-file=" + tokens, "--advertise-address=" + ip})
	apiserver := strings.TrimPrefix(cp.admin.Host, "https://")
	_, apiPort, _ := net.SplitHostPort(apiserver)

	// kube-proxy's part for the one Service the agent uses: the kubernetes Service's
	// address leads to the API server, which listens on 127.0.0.1 only.
	startProxyAt(t, net.JoinHostPort(ip, apiPort), apiserver)
	rule := []string{"PREROUTING", "-d", kubernetesServiceIP + "/32", "-p", "tcp", "--dport", "443",
		"-j", "DNAT", "--to-destination", net.JoinHostPort(ip, apiPort)}
	iptables(t, append([]string{"-t", "nat", "-I"}, rule...)...)
	t.Cleanup(func() { _ = exec.Command("iptables", append([]string{"-t", "nat", "-D"}, rule...)...).Run() })

	// The kubelet, like the pods, reaches the API server at the node's address, which
	// its certificate covers.
	n := startKubeletNode(t, kubelet, net.JoinHostPort(ip, apiPort), cp.servingCert)
	n.sysctl(t, "net.ipv4.ip_forward", "1")
	importImages(t, n.client)
	n.startKubelet(t, cp.client)

	ctx := context.Background()
	if _, err := cp.client.NodeV1().RuntimeClasses().Create(ctx, &nodev1.RuntimeClass{
		ObjectMeta: metav1.ObjectMeta{Name: "nvidia"}, Handler: "nvidia"}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cp.startEndpointSlices(t)
	ds := deployAgent(t, cp)
	// What kube-controller-manager's root CA publisher does, for the pods' tokens.
	for _, ns := range []string{agentNamespace, "default"} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(cp.servingCert)}}
		if _, err := cp.client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	agent := agentPod(t, cp, ds)
	cp.awaitPodReady(t, agentNamespace, agent.Name, 90*time.Second, n)
	cp.namespace(t, "team-a")
	ready := func(p *corev1.Pod) bool { return podCondition(p, corev1.PodReady) == corev1.ConditionTrue }

	// Host network, serving on the host's loopback: probed from the host's network
	// namespace, not from the agent's pod network.
	hostPort := testsock.FreePort(t)
	hostnet := cp.runPod(t, n, "team-a", "hostnet", func(p *corev1.Pod) {
		p.Spec.HostNetwork = true
		p.Spec.Containers[0].Args = []string{"--bind", "127.0.0.1", "--port", fmt.Sprint(hostPort)}
		p.Annotations[kube.AnnotationChecks] = fmt.Sprintf(`{"app":{
			"liveness_check":{"http_get":{"path":"/health","port":%[1]d},"period_seconds":1,"failure_threshold":2},
			"readiness_check":{"http_get":{"path":"/health","port":%[1]d},"period_seconds":1}}}`, hostPort)
	})
	// A pod network pod whose readiness the test turns off and on through a file.
	gated := cp.runPod(t, n, "team-a", "gated", func(p *corev1.Pod) {
		p.Annotations[kube.AnnotationChecks] = `{"app":{"readiness_check":{"exec":{"command":["cat","/state/ready"]},"period_seconds":0.5,"failure_threshold":1}}}`
	})
	cp.service(t, gated)
	gated.setReady(t, true)
	for _, p := range []*testPod{hostnet, gated} {
		cp.awaitPod(t, p, 60*time.Second, "Ready", ready, func() string { return "agent:\n" + n.podLog(agent) })
	}

	t.Run("a host-network pod on 127.0.0.1 stays running and ready", func(t *testing.T) {
		await.Holds(t, 60*time.Second, "hostnet ready, never restarted", func() bool {
			p := cp.pod(t, hostnet)
			return ready(p) && restarts(p) == 0
		}, func() string { return fmt.Sprintf("%+v\nagent:\n%s", cp.pod(t, hostnet).Status, n.podLog(agent)) })
	})

	t.Run("the kubelet's Ready and the EndpointSlice follow the readiness gate", func(t *testing.T) {
		cp.awaitEndpoint(t, gated, true)
		gated.setReady(t, false)
		cp.awaitPod(t, gated, 10*time.Second, "not Ready", func(p *corev1.Pod) bool { return !ready(p) })
		cp.awaitEndpoint(t, gated, false)
		time.Sleep(10 * time.Second) // failing for 10 s
		gated.setReady(t, true)
		cp.awaitPod(t, gated, 10*time.Second, "Ready again", ready)
		cp.awaitEndpoint(t, gated, true)
	})

	t.Run("exec probes of the kubelet's containers run on the exec runner", func(t *testing.T) {
		// The gated pod's readiness is an exec check at 0.5 s: by now it ran many times,
		// on a runner started in the kubelet's container through CRI's containerd, by an
		// agent in its DaemonSet's pod (hostPID, dropped capabilities).
		runner := regexp.MustCompile(`(?m)^probe_agent_exec_path_total\{path="runner"\} (\d+)`)
		await.Until(t, 30*time.Second, "exec probes on the runner", func() bool {
			_, body := agentGet("/metrics")
			m := runner.FindSubmatch(body)
			return m != nil && string(m[1]) != "0"
		}, func() string {
			_, body := agentGet("/metrics")
			lines := regexp.MustCompile(`(?m)^probe_agent_exec_path_total.*$`).FindAll(body, -1)
			return string(bytes.Join(lines, []byte("\n"))) + "\nagent:\n" + n.podLog(agent)
		})
	})

	t.Run("a liveness failure: the agent stops the container, the kubelet restarts it", func(t *testing.T) {
		live := cp.runPod(t, n, "team-a", "live", func(p *corev1.Pod) {
			p.Annotations[kube.AnnotationChecks] = `{"app":{"liveness_check":{"exec":{"command":["cat","/state/ready"]},
				"initial_delay_seconds":2,"period_seconds":0.5,"failure_threshold":2,"termination_grace_period_seconds":2}}}`
		})
		live.setReady(t, true)
		cp.awaitPod(t, live, 60*time.Second, "Ready", ready, func() string { return n.podLog(agent) })
		live.setReady(t, false)
		cp.awaitPod(t, live, 30*time.Second, "restarted by the kubelet", func(p *corev1.Pod) bool { return restarts(p) == 1 })
		live.setReady(t, true)
		cp.awaitPod(t, live, 30*time.Second, "Ready again", ready)
		await.Until(t, 10*time.Second, "the agent following the new container, counting the restart", func() bool {
			s, ok := agentContainer(t, "team-a/live/app")
			return ok && s.RestartCount == 1 && s.Ready
		})
		for _, reason := range []string{"Unhealthy", "Killing"} {
			if notes := cp.eventNotes(t, "team-a", "live", reason); len(notes) == 0 {
				t.Errorf("no %s event on the pod", reason)
			}
		}
	})

	t.Run("a server bound to 127.0.0.1 in a pod network is explained", func(t *testing.T) {
		cp.runPod(t, n, "team-a", "loopback", func(p *corev1.Pod) {
			p.Spec.Containers[0].Args = []string{"--bind", "127.0.0.1", "--port", "8000"}
			p.Annotations[kube.AnnotationChecks] = `{"app":{"liveness_check":{"http_get":{"path":"/health","port":8000},
				"initial_delay_seconds":1,"period_seconds":0.5,"failure_threshold":1,"termination_grace_period_seconds":2}}}`
		})
		const want = "listening on 127.0.0.1:8000 only; bind 0.0.0.0"
		await.Until(t, 60*time.Second, "an Unhealthy event that explains", func() bool {
			for _, note := range cp.eventNotes(t, "team-a", "loopback", "Unhealthy") {
				if strings.Contains(note, want) {
					return true
				}
			}
			return false
		}, func() string { return n.podLog(agent) })
		s, ok := agentContainer(t, "team-a/loopback/app")
		if !ok || !strings.Contains(s.Probes["liveness"].LastOutput, want) {
			t.Errorf("the status API does not explain: %+v", s.Probes["liveness"])
		}
	})

	steady := []*testPod{hostnet, gated}
	counts := map[string]int32{}
	for _, p := range steady {
		counts[p.name] = restarts(cp.pod(t, p))
	}
	// unchanged checks that the steady pods stayed Ready and were not restarted.
	unchanged := func(t *testing.T) {
		t.Helper()
		for _, p := range steady {
			if pod := cp.pod(t, p); !ready(pod) || restarts(pod) != counts[p.name] {
				t.Errorf("%s: ready %v, restarts %d (was %d)", p.name, ready(pod), restarts(pod), counts[p.name])
			}
		}
	}

	t.Run("the agent pod deleted and created again, as a rollout does", func(t *testing.T) {
		seen := cp.watchConditions(t, "team-a", kube.DefaultGateCondition, string(corev1.PodReady))
		grace := int64(30)
		if err := cp.client.CoreV1().Pods(agentNamespace).Delete(ctx, agent.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
			t.Fatal(err)
		}
		await.Until(t, 60*time.Second, "the old agent pod gone", func() bool {
			_, err := cp.client.CoreV1().Pods(agentNamespace).Get(ctx, agent.Name, metav1.GetOptions{})
			return err != nil
		})
		agent = agentPod(t, cp, ds)
		cp.awaitPodReady(t, agentNamespace, agent.Name, 60*time.Second, n)
		await.Until(t, 20*time.Second, "the new agent probing", func() bool {
			s, ok := agentContainer(t, "team-a/gated/app")
			return ok && s.Ready && s.Probes["readiness"].ConsecutiveSuccesses >= 3
		})
		for _, p := range steady {
			for _, c := range seen(p.name) {
				if !strings.HasPrefix(c, "True") {
					t.Errorf("%s went through %v while the agent was replaced", p.name, seen(p.name))
					break
				}
			}
		}
		unchanged(t)
	})

	t.Run("containerd restarted under the kubelet and the agent", func(t *testing.T) {
		n.restartContainerd(t)
		// /readyz is 200 only while the agent is connected to containerd.
		await.Until(t, 10*time.Second, "the agent seeing containerd gone", func() bool { code, _ := agentGet("/readyz"); return code == 503 })
		await.Until(t, 60*time.Second, "the agent reconnected", func() bool { code, _ := agentGet("/readyz"); return code == 200 },
			func() string { return n.podLog(agent) + "\ncontainerd:\n" + n.log("containerd") })
		await.Holds(t, 10*time.Second, "the healthy pods ready, not restarted", func() bool {
			for _, p := range steady {
				if pod := cp.pod(t, p); !ready(pod) || restarts(pod) != counts[p.name] {
					return false
				}
			}
			return true
		})
		unchanged(t)
	})
}

// agentGet reads a path of the agent's HTTP interface inside the agent's pod network,
// as `kubectl port-forward` would reach it; 0 when it cannot.
func agentGet(path string) (int, []byte) {
	pid := agentPID()
	if pid == 0 {
		return 0, nil
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return dialInNetns(pid, addr) }}}
	resp, err := client.Get("http://127.0.0.1:9469" + path)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// agentContainer reads one container's status from the agent's status API.
func agentContainer(t *testing.T, name string) (agentapi.ContainerStatus, bool) {
	t.Helper()
	var s agentapi.ContainerStatus
	code, body := agentGet("/v1/containers/" + name)
	return s, code == http.StatusOK && json.Unmarshal(body, &s) == nil
}

// agentPID finds the agent's process (hostPID shows it to the test).
func agentPID() int {
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.HasPrefix(string(cmdline), "/usr/bin/probe-agent\x00run\x00") && testproc.Alive(pid) {
			return pid
		}
	}
	return 0
}

// dialInNetns connects to addr from inside the network namespace of process pid.
func dialInNetns(pid int, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			done <- result{nil, err}
			return
		}
		defer self.Close()
		target, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			done <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			done <- result{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			goruntime.UnlockOSThread()
		} // else the thread stays locked and goes away with this goroutine
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// eventNotes lists the notes of the Events about a pod with a reason.
func (cp *controlPlane) eventNotes(t *testing.T, ns, pod, reason string) []string {
	t.Helper()
	list, err := cp.client.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil
	}
	var notes []string
	for _, e := range list.Items {
		if e.Regarding.Name == pod && e.Reason == reason {
			notes = append(notes, e.Note)
		}
	}
	return notes
}

// watchConditions records, from now on, every status of the given conditions of the
// pods of a namespace; the returned function lists a pod's as "Status Reason".
func (cp *controlPlane) watchConditions(t *testing.T, ns string, types ...string) func(pod string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := cp.client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]string{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if pod, ok := ev.Object.(*corev1.Pod); ok {
				for _, ct := range types {
					if c := condition(pod, ct); c != nil {
						mu.Lock()
						seen[pod.Name] = append(seen[pod.Name], string(c.Status)+" "+ct+" "+c.Reason)
						mu.Unlock()
					}
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func(pod string) []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen[pod]...)
	}
}

func podCondition(p *corev1.Pod, t corev1.PodConditionType) corev1.ConditionStatus {
	if c := condition(p, string(t)); c != nil {
		return c.Status
	}
	return ""
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// runPod creates a pod on node-1 for the real kubelet: the sample server's image, the
// readiness gate, a host directory at /state, no ServiceAccount token; mutate adds the
// rest (the checks annotation first of all).
func (cp *controlPlane) runPod(t *testing.T, n *kubeletNode, ns, name string, mutate func(*corev1.Pod)) *testPod {
	t.Helper()
	tp := &testPod{namespace: ns, name: name, gate: true, state: filepath.Join(n.dir, "state-"+ns+"-"+name)}
	if err := os.MkdirAll(tp.state, 0o755); err != nil {
		t.Fatal(err)
	}
	dirType := corev1.HostPathDirectory
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}, Annotations: map[string]string{}},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: kube.DefaultGateCondition}},
			Containers: []corev1.Container{{Name: "app", Image: serverImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"/bin/sample-server"}, Args: []string{"--port", "8000"},
				VolumeMounts: []corev1.VolumeMount{{Name: "state", MountPath: "/state"}}}},
			Volumes: []corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: tp.state, Type: &dirType}}}},
		},
	}
	mutate(pod)
	created, err := cp.client.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tp.api, tp.uid = created, created.UID
	return tp
}

func (cp *controlPlane) pod(t *testing.T, p *testPod) *corev1.Pod {
	t.Helper()
	pod, err := cp.client.CoreV1().Pods(p.namespace).Get(context.Background(), p.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

func (cp *controlPlane) awaitPod(t *testing.T, p *testPod, within time.Duration, what string, cond func(*corev1.Pod) bool, detail ...func() string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	await.Until(t, within, p.name+" "+what, func() bool { pod = cp.pod(t, p); return cond(pod) },
		append([]func() string{func() string { return fmt.Sprintf("%+v", pod.Status) }}, detail...)...)
	return pod
}

// podLog is the last of a pod's first container's log, as the kubelet wrote it.
func (n *kubeletNode) podLog(p *corev1.Pod) string {
	logs, _ := filepath.Glob(filepath.Join(n.dir, "pod-logs", p.Namespace+"_"+p.Name+"_*", "*", "*.log"))
	var b strings.Builder
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		if len(data) > 6000 {
			data = data[len(data)-6000:]
		}
		b.Write(data)
	}
	return b.String()
}

func iptables(t *testing.T, args ...string) {
	t.Helper()
	if b, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		t.Fatalf("iptables %v: %v %s", args, err, b)
	}
}

func (cp *controlPlane) awaitPodReady(t *testing.T, ns, name string, within time.Duration, n *kubeletNode) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	await.Until(t, within, ns+"/"+name+" Ready", func() bool {
		var err error
		pod, err = cp.client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		c := condition(pod, string(corev1.PodReady))
		return c != nil && c.Status == corev1.ConditionTrue
	}, func() string {
		return fmt.Sprintf("pod status %+v\nkubelet:\n%s\ncontainerd:\n%s", pod.Status, n.log("kubelet"), n.log("containerd"))
	})
	return pod
}
