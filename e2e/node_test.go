package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/probe-agent/probe-agent/kube"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

// runKubelet plays the kubelet's part for the pods of node in the API server: it
// reports them running with an IP and their containers ready (the test runs them
// through CRI itself), and computes Ready exactly as the kubelet's status manager
// does: ContainersReady and every readiness gate's condition True.
func (cp *controlPlane) runKubelet(t *testing.T, node string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactoryWithOptions(cp.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}))
	inf := factory.Core().V1().Pods().Informer()
	sync := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Namespace == agentNamespace {
			return
		}
		status, reason, message := kubeletReady(pod)
		cur := condition(pod, string(corev1.PodReady))
		if pod.Status.PodIP != "" && cur != nil && cur.Status == status && cur.Reason == reason {
			return
		}
		now := metav1.Now()
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{
			"phase": corev1.PodRunning, "podIP": podIP(pod), "podIPs": []corev1.PodIP{{IP: podIP(pod)}},
			"conditions": []corev1.PodCondition{
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.PodReady, Status: status, Reason: reason, Message: message, LastTransitionTime: now},
			}}})
		_, _ = cp.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: sync, UpdateFunc: func(_, obj any) { sync(obj) }})
	factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
}

// kubeletReady is the kubelet's Ready condition for a pod whose containers are ready
// (pkg/kubelet/status.GeneratePodReadyCondition).
func kubeletReady(pod *corev1.Pod) (corev1.ConditionStatus, string, string) {
	for _, g := range pod.Spec.ReadinessGates {
		c := condition(pod, string(g.ConditionType))
		if c == nil {
			return corev1.ConditionFalse, "ReadinessGatesNotReady",
				fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", g.ConditionType)
		}
		if c.Status != corev1.ConditionTrue {
			return corev1.ConditionFalse, "ReadinessGatesNotReady",
				fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %v", g.ConditionType, c.Status)
		}
	}
	return corev1.ConditionTrue, "", ""
}

// podIP gives each test pod a stable, non-loopback address (EndpointSlices refuse
// loopback ones).
func podIP(pod *corev1.Pod) string {
	if pod.Status.PodIP != "" {
		return pod.Status.PodIP
	}
	h := 0
	for _, b := range []byte(pod.Namespace + "/" + pod.Name) {
		h = (h*31 + int(b)) % 250
	}
	return fmt.Sprintf("10.244.%d.%d", 1+h%200, 2+h%250)
}

func condition(pod *corev1.Pod, t string) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if string(pod.Status.Conditions[i].Type) == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

// node is a private containerd with CRI, driven as the kubelet drives it.
type node struct {
	daemon *ctrdtest.Daemon
	rs     cri.RuntimeServiceClient
	dir    string
}

const busyboxImage = "docker.io/local/busybox:1"

func startNode(t *testing.T) *node {
	t.Helper()
	ctrdtest.Require(t)
	dir := t.TempDir()
	d := ctrdtest.Start(t, ctrdtest.WithKubeletCRI(busyboxImage, filepath.Join(dir, "cni")))
	client := d.Client(t)
	ctrdtest.ImportImage(t, client, "k8s.io", busyboxImage, ctrdtest.Rootfs(t), []string{"/bin/sleep", "2147483647"})
	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &node{daemon: d, rs: cri.NewRuntimeServiceClient(conn), dir: dir}
}

// testPod is a pod as the API server and CRI both see it.
type testPod struct {
	namespace, name string
	uid             types.UID
	gate            bool
	checks          string // the probe-agent.io/checks annotation
	env             map[string]string
	state           string // a host directory mounted at /state in the container
	api             *corev1.Pod
}

// run creates the pod in the API server on node-1, then runs its sandbox and its one
// container "app" through CRI with the kubelet's labels and annotations.
func (n *node) run(t *testing.T, cp *controlPlane, p *testPod) {
	t.Helper()
	ctx := context.Background()
	cp.namespace(t, p.namespace)
	api := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.namespace, Labels: map[string]string{"app": p.name},
			Annotations: map[string]string{kube.AnnotationChecks: p.checks}},
		Spec: corev1.PodSpec{NodeName: "node-1", AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "app", Image: busyboxImage, Ports: []corev1.ContainerPort{{ContainerPort: 8000}}}}},
	}
	if p.gate {
		api.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: kube.DefaultGateCondition}}
	}
	api, err := cp.client.CoreV1().Pods(p.namespace).Create(ctx, api, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.api, p.uid = api, api.UID
	p.state = filepath.Join(n.dir, p.namespace+"-"+p.name)
	logDir := filepath.Join(n.dir, "logs", p.namespace+"-"+p.name)
	for _, d := range []string{p.state, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	labels := map[string]string{"io.kubernetes.pod.name": p.name, "io.kubernetes.pod.namespace": p.namespace,
		"io.kubernetes.pod.uid": string(p.uid)}
	sandbox := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: p.name, Namespace: p.namespace, Uid: string(p.uid)},
		Labels:       labels,
		Annotations:  map[string]string{"kubernetes.io/config.source": "api", kube.AnnotationChecks: p.checks},
		LogDirectory: logDir,
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}}},
	}
	sb, err := n.rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, n.daemon.Log())
	}
	clabels := map[string]string{"io.kubernetes.container.name": "app"}
	for k, v := range labels {
		clabels[k] = v
	}
	var envs []*cri.KeyValue
	for k, v := range p.env {
		envs = append(envs, &cri.KeyValue{Key: k, Value: []byte(v)})
	}
	c, err := n.rs.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: sandbox,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "app"}, Image: &cri.ImageSpec{Image: busyboxImage},
			Command: []string{"/bin/sleep", "2147483647"}, Labels: clabels, Envs: envs,
			Annotations: map[string]string{"io.kubernetes.container.restartCount": "0"},
			Mounts:      []*cri.Mount{{ContainerPath: "/state", HostPath: p.state}},
			LogPath:     "app.log",
		}})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := n.rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
}

// setReady makes the pod's `cat /state/ready` readiness check pass or fail.
func (p *testPod) setReady(t *testing.T, ready bool) {
	t.Helper()
	f := filepath.Join(p.state, "ready")
	if ready {
		if err := os.WriteFile(f, []byte("ok\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// proxy stands between the agent and the API server, so that a test can take the API
// server away from the agent and give it back.
type proxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	blocked bool
	conns   map[net.Conn]bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	return startProxyAt(t, "127.0.0.1:0", target)
}

// startProxyAt is startProxy listening on a given address.
func startProxyAt(t *testing.T, listen, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.block() })
	return p
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		blocked := p.blocked
		if !blocked {
			p.conns[c] = true
		}
		p.mu.Unlock()
		if blocked {
			c.Close()
			continue
		}
		go p.pipe(c)
	}
}

func (p *proxy) pipe(c net.Conn) {
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[s] = true
	p.mu.Unlock()
	go func() { _, _ = io.Copy(s, c); s.Close() }()
	_, _ = io.Copy(c, s)
	c.Close()
}

// block drops every connection and refuses new ones until unblock.
func (p *proxy) block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) unblock() {
	p.mu.Lock()
	p.blocked = false
	p.mu.Unlock()
}

func (p *proxy) addr() string { return p.ln.Addr().String() }
