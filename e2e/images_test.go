package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd"

	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

// Images, built without Docker and imported into the node's containerd (namespace
// k8s.io, as the kubelet's CRI uses): nothing is pulled.
const (
	agentImage  = "docker.io/local/probe-agent:e2e"
	serverImage = "docker.io/local/sample-server:e2e"
)

// importImages builds and imports the pause, sample-server and agent images.
func importImages(t *testing.T, client *containerd.Client) {
	t.Helper()
	ctrdtest.ImportImage(t, client, "k8s.io", pauseImage, ctrdtest.Rootfs(t), []string{"/bin/sleep", "2147483647"})
	server := ctrdtest.BuildStatic(t, "cmd/sample-server")
	ctrdtest.ImportImage(t, client, "k8s.io", serverImage, ctrdtest.Rootfs(t, server), []string{"/bin/sample-server"})
	// deploy/Dockerfile's ENTRYPOINT and CMD.
	ctrdtest.ImportImageWithEntrypoint(t, client, "k8s.io", agentImage, agentRootfs(t), []string{"/usr/bin/probe-agent"},
		[]string{"run", "--runtime", "containerd", "--listen", ":9469"})
}

// agentRootfs is the agent's image as deploy/Dockerfile builds it, on a busybox-static
// base instead of distroless: the binary is built by the Dockerfile's own build
// command, and the C libraries it links are copied from the machine that built it, as
// the Dockerfile's base provides them.
func agentRootfs(t *testing.T) string {
	t.Helper()
	root := ctrdtest.Rootfs(t)
	bin := filepath.Join(root, "usr", "bin", "probe-agent")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", dockerfileBuild(t, bin))
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "VERSION=e2e", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the agent as deploy/Dockerfile does: %v\n%s", err, b)
	}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>":
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		default:
			continue
		}
		data, err := os.ReadFile(lib) // follows the symlink to the library itself
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, lib)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// dockerfileBuild is deploy/Dockerfile's RUN instruction that builds the agent, with its
// output path replaced by out.
func dockerfileBuild(t *testing.T, out string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		run, ok := strings.CutPrefix(strings.TrimSpace(line), "RUN ")
		if ok && strings.Contains(run, "go build") && strings.Contains(run, "./cmd/probe-agent") {
			if !strings.Contains(run, "-o /out/probe-agent") {
				t.Fatalf("deploy/Dockerfile's build no longer writes /out/probe-agent: %s", run)
			}
			return strings.Replace(run, "-o /out/probe-agent", "-o "+out, 1)
		}
	}
	t.Fatal("deploy/Dockerfile has no RUN instruction that builds ./cmd/probe-agent")
	return ""
}
