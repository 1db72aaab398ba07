package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

// The node rig: a real kubelet and a private containerd with CRI, both in a mount
// namespace of their own in which private directories stand for /var/lib, /var/log and
// /run/containerd (so containerd's socket is /run/containerd/containerd.sock there, as
// the DaemonSet expects), bridge CNI from containernetworking-plugins for ordinary pods,
// and the API server reachable from pods at the kubernetes Service's address (the test
// does kube-proxy's one DNAT). Everything it changes on the host is undone.

const (
	nodeName   = "node-1"
	cniBinDir  = "/usr/lib/cni"
	podSubnet  = "10.244.99.0/24"
	bridgeName = "pa-e2e0"
	pauseImage = "docker.io/local/pause:e2e"
	kubeletTok = "kubelet-node-1-token"
)

// requireNode fails (with CI) or skips the test when the node rig cannot run here.
func requireNode(t *testing.T) {
	t.Helper()
	ctrdtest.Require(t)
	var missing []string
	for _, bin := range []string{"unshare", "nsenter", "iptables", "ip", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			missing = append(missing, "CNI plugin "+p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "the node tests need " + strings.Join(missing, ", ") + " (apt-get install containernetworking-plugins iptables util-linux iproute2)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// nodeIP is the address other machines would reach this one at: the source address of
// the default route.
func nodeIP(t *testing.T) string {
	t.Helper()
	c, err := net.Dial("udp", "192.0.2.254:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// buildKubelet builds the kubelet this module requires (k8s.io/kubernetes v1.37.2).
func buildKubelet(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "kubelet")
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X k8s.io/component-base/version.gitVersion=v1.37.2", "k8s.io/kubernetes/cmd/kubelet")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the kubelet: %v\n%s", err, b)
	}
	return out
}

// kubeletNode is the running rig.
type kubeletNode struct {
	dir     string // host directory holding the node's private trees
	holder  *exec.Cmd
	address string // containerd's socket, seen from the host
	ip      string
	client  *containerd.Client
	undo    []func()
}

func (n *kubeletNode) pid(name string) int {
	b, _ := os.ReadFile(filepath.Join(n.dir, name+".pid"))
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

func (n *kubeletNode) log(name string) string {
	b, _ := os.ReadFile(filepath.Join(n.dir, name+".log"))
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// sysctl sets a kernel setting and restores its old value when the test ends.
func (n *kubeletNode) sysctl(t *testing.T, key, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n.undo = append(n.undo, func() { _ = os.WriteFile(path, old, 0o644) })
	if value != "" {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// startKubeletNode starts containerd and the kubelet for node-1 against the API server
// at apiserver (host:port, 127.0.0.1) with the CA caPEM.
func startKubeletNode(t *testing.T, kubelet, apiserver string, caPEM []byte) *kubeletNode {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pa-node-")
	if err != nil {
		t.Fatal(err)
	}
	n := &kubeletNode{dir: dir, ip: nodeIP(t)}
	t.Cleanup(n.stop)
	n.undo = append(n.undo, cgroupsLeftBehind(t))
	for _, d := range []string{"var-lib", "var-log", "run-containerd", "cni-conf", "cni-data", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n.address = filepath.Join(dir, "run-containerd", "containerd.sock")
	// The kubelet and the bridge plugin change these; they are put back afterwards.
	for _, k := range []string{"kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "net.ipv4.ip_forward"} {
		n.sysctl(t, k, "")
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("containerd.toml", fmt.Sprintf(`version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
    # What the NVIDIA container toolkit installs, here without a GPU: the DaemonSet
    # asks for runtimeClassName nvidia.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, pauseImage, cniBinDir, filepath.Join(dir, "cni-conf")))
	write("cni-conf/10-bridge.conflist", fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pa-e2e", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}`, bridgeName, filepath.Join(dir, "cni-data"), podSubnet))
	n.undo = append(n.undo, func() { _ = exec.Command("ip", "link", "delete", bridgeName).Run() })
	write("ca.crt", string(caPEM))
	write("kubeconfig", fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://%s", certificate-authority: %q}}]
users: [{name: kubelet, user: {token: %q}}]
contexts: [{name: e2e, context: {cluster: e2e, user: kubelet}}]
current-context: e2e
`, apiserver, filepath.Join(dir, "ca.crt"), kubeletTok))
	port, healthz := testsock.FreePort(t), testsock.FreePort(t)
	write("kubelet.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: 127.0.0.1
port: %d
healthzPort: %d
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
podLogsDir: %q
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
protectKernelDefaults: false
nodeStatusUpdateFrequency: 2s
syncFrequency: 2s
fileCheckFrequency: 2s
serializeImagePulls: false
`, port, healthz, filepath.Join(dir, "pod-logs")))
	script := write("node.sh", fmt.Sprintf(`set -e
mount --bind %[1]s/var-lib /var/lib
mount --bind %[1]s/var-log /var/log
mount --bind %[1]s/run-containerd /run/containerd
containerd --config %[1]s/containerd.toml >%[1]s/containerd.log 2>&1 &
echo $! >%[1]s/containerd.pid
for i in $(seq 200); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.05; done
echo started >%[1]s/containerd.ready
while [ ! -e %[1]s/images.ready ]; do sleep 0.05; done
%[2]s --config %[1]s/kubelet.yaml --kubeconfig %[1]s/kubeconfig --root-dir /var/lib/kubelet --cert-dir /var/lib/kubelet/pki \
  --hostname-override %[3]s --node-ip %[4]s --node-labels nvidia.com/gpu.present=true >%[1]s/kubelet.log 2>&1 &
echo $! >%[1]s/kubelet.pid
wait
`, dir, kubelet, nodeName, n.ip))
	n.holder = exec.Command("unshare", "-m", "--propagation", "private", "bash", script)
	n.holder.Stdout, n.holder.Stderr = nil, nil
	n.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.holder.Start(); err != nil {
		t.Fatal(err)
	}
	await.Until(t, 20*time.Second, "the node's containerd", func() bool {
		_, err := os.Stat(filepath.Join(dir, "containerd.ready"))
		return err == nil
	}, func() string { return n.log("containerd") })
	n.client, err = containerd.New(n.address)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startKubelet lets the kubelet start once the images are in containerd's store.
func (n *kubeletNode) startKubelet(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.dir, "images.ready"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	await.Until(t, 60*time.Second, "node-1 Ready", func() bool {
		node, err := cs.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	}, func() string { return n.log("kubelet") })
}

// restartContainerd kills the node's containerd and starts it again in the node's
// mount namespace, under the same kubelet and agent.
func (n *kubeletNode) restartContainerd(t *testing.T) {
	t.Helper()
	if p := n.pid("containerd"); p > 0 {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(n.holder.Process.Pid), "-m", "--",
		"sh", "-c", fmt.Sprintf("containerd --config %[1]s/containerd.toml >>%[1]s/containerd.log 2>&1 & echo $! >%[1]s/containerd.pid", n.dir))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restarting containerd: %v %s", err, b)
	}
}

// stop kills the kubelet, stops and removes every pod through CRI (so CNI takes back
// each pod's veth, address and network namespace), kills containerd and whatever is
// left in the node's mount namespace, and undoes what they changed on the host.
func (n *kubeletNode) stop() {
	if p := n.pid("kubelet"); p > 0 {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	n.removePods()
	if n.client != nil {
		n.client.Close()
	}
	if p := n.pid("containerd"); p > 0 {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if n.holder != nil && n.holder.Process != nil {
		mnt, _ := os.Readlink("/proc/" + strconv.Itoa(n.holder.Process.Pid) + "/ns/mnt")
		procs, _ := os.ReadDir("/proc")
		for _, e := range procs {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if ns, _ := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); mnt != "" && ns == mnt {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = syscall.Kill(-n.holder.Process.Pid, syscall.SIGKILL)
		_ = n.holder.Wait()
	}
	for i := len(n.undo) - 1; i >= 0; i-- {
		n.undo[i]()
	}
	_ = os.RemoveAll(n.dir)
}

// removePods stops and removes every pod sandbox through CRI, as a drained kubelet would.
func (n *kubeletNode) removePods() {
	conn, err := grpc.NewClient("unix://"+n.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return
	}
	for _, sb := range list.Items {
		_, _ = rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.Id})
		_, _ = rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.Id})
	}
}

// cgroupsLeftBehind removes the cgroups the node's containers leave in every hierarchy
// (containerd names them after its namespace, k8s.io), those of this test only.
func cgroupsLeftBehind(t *testing.T) func() {
	t.Helper()
	before := map[string]bool{}
	dirs := func() []string {
		found, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io/*")
		more, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io")
		return append(found, more...)
	}
	for _, d := range dirs() {
		before[d] = true
	}
	return func() {
		for _, d := range dirs() { // children first: the glob lists them first
			if fi, err := os.Stat(d); err == nil && fi.IsDir() && !before[d] {
				_ = os.Remove(d)
			}
		}
	}
}
