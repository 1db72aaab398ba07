package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime/containerd"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

const testImage = "docker.io/local/busybox:1"

// TestIntegrationKubernetesCRIFollowsKubeletRestarts drives containerd's CRI plugin as
// the kubelet does: a pod whose annotation carries the checks, a container that turns
// unhealthy, the agent stopping it, and the kubelet's replacement being followed with
// the restart count carried over.
func TestIntegrationKubernetesCRIFollowsKubeletRestarts(t *testing.T) {
	t.Parallel()
	ctrdtest.Require(t)
	containerdSlots <- struct{}{}
	t.Cleanup(func() { <-containerdSlots })
	dir := t.TempDir()
	d := ctrdtest.Start(t, ctrdtest.WithKubeletCRI(testImage, filepath.Join(dir, "cni")))
	client := d.Client(t)
	rootfs := ctrdtest.Rootfs(t)
	ctrdtest.ImportImage(t, client, "k8s.io", testImage, rootfs, []string{"/bin/sleep", "2147483647"})

	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	rt, err := containerd.New(containerd.Options{Address: d.Address, StateDir: t.TempDir(), RuntimeDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h := runAgent(t, Options{Runtime: rt, Logger: log, Backoff: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
		GracePeriod: MinGracePeriod, Prober: prober.Options{Workers: 8}}, logs)

	// The pod, as the kubelet sends it (pkg/kubelet/kuberuntime: labels, annotations).
	const uid = "0f6c5c8e-0000-4000-8000-000000000001"
	logDir := filepath.Join(dir, "logs")
	state := filepath.Join(dir, "state")
	for _, p := range []string{logDir, state} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sandbox := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "web-0", Namespace: "team-a", Uid: uid},
		Labels: map[string]string{"app": "web", "io.kubernetes.pod.name": "web-0",
			"io.kubernetes.pod.namespace": "team-a", "io.kubernetes.pod.uid": uid},
		Annotations: map[string]string{
			"kubernetes.io/config.source": "api",
			containerd.AnnotationChecks: `{"app":{"liveness_check":{"exec":{"command":["cat","/tmp/healthy"]},"period_seconds":0.2},
				"readiness_check":{"exec":{"command":["true"]},"period_seconds":0.2}}}`,
		},
		LogDirectory: logDir,
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}}},
	}
	pod, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, d.Log())
	}
	// The container fails its liveness check the first time it runs, never again: the
	// marker lives in a host directory, as state on a volume would.
	create := func(attempt uint32) string {
		t.Helper()
		cfg := &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "app", Attempt: attempt},
			Image:    &cri.ImageSpec{Image: testImage},
			Command: []string{"/bin/sh", "-c", "touch /tmp/healthy; if [ ! -f /state/failed-once ]; then " +
				"touch /state/failed-once; sleep 1; rm /tmp/healthy; fi; exec sleep 600"},
			Labels: map[string]string{"io.kubernetes.container.name": "app", "io.kubernetes.pod.name": "web-0",
				"io.kubernetes.pod.namespace": "team-a", "io.kubernetes.pod.uid": uid},
			Annotations: map[string]string{"io.kubernetes.container.restartCount": string(rune('0' + attempt)),
				"io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
			Mounts:  []*cri.Mount{{ContainerPath: "/state", HostPath: state}},
			LogPath: filepath.Join("app", string(rune('0'+attempt))+".log"),
		}
		c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: pod.PodSandboxId, Config: cfg, SandboxConfig: sandbox})
		if err != nil {
			t.Fatalf("CreateContainer: %v\n%s", err, d.Log())
		}
		if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatalf("StartContainer: %v\n%s", err, d.Log())
		}
		return c.ContainerId
	}
	first := create(0)

	const name = "team-a/web-0/app"
	s := h.waitFor(name, 20*time.Second, "ready", ready)
	if s.ID != first || s.Probes["liveness"] == nil {
		t.Fatalf("status %+v, want container %s with the annotation's checks", s, first)
	}
	// The liveness failure stops the container; the agent does not restart it.
	h.waitFor(name, 20*time.Second, "stopped", func(s ContainerStatus) bool { return s.State == StateExited })
	var st *cri.ContainerStatusResponse
	var stErr error
	await.Until(t, 20*time.Second, "the CRI plugin to see the container exit", func() bool {
		st, stErr = rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: first})
		return stErr == nil && st.Status.State == cri.ContainerState_CONTAINER_EXITED
	}, func() string { return fmt.Sprint(st, stErr) })
	// The kubelet's part: a new container for the same pod and name.
	second := create(1)
	s = h.waitFor(name, 20*time.Second, "following the replacement", func(s ContainerStatus) bool {
		return s.ID == second && s.Ready
	})
	if s.RestartCount != 1 {
		t.Fatalf("restart count %d, want 1 carried over to the new container", s.RestartCount)
	}
	h.consistently(time.Second, "the replacement stays healthy", func(ContainerStatus) bool {
		s, _ := h.a.Container(name)
		return s.State == StateRunning && s.RestartCount == 1
	})
	if n := logs.FilterMessage("stopping container; the kubelet restarts it").Len(); n != 1 {
		t.Fatalf("%d stop lines, want 1:\n%s", n, h.logTail())
	}
	if n := logs.FilterMessage("restarting container").Len(); n != 0 {
		t.Fatalf("the agent restarted a Kubernetes container itself:\n%s", h.logTail())
	}
	if got := h.a.Containers(); len(got) != 1 {
		t.Fatalf("containers %+v: the sandbox or the old container is listed", got)
	}
}
