package ctrdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
)

// TestDaemonsShareNoContainerState runs a container with the same namespace and ID on
// two daemons at once: tests run daemons in parallel, and a killed test run leaves
// runc's state behind, so one daemon's containers must never be seen by another's runc.
func TestDaemonsShareNoContainerState(t *testing.T) {
	Require(t)
	rootfs := Rootfs(t)
	var tasks []containerd.Task
	for range 2 {
		d := Start(t)
		tasks = append(tasks, RunContainer(t, d.Client(t), "default", "same-id", rootfs, nil, "sleep", "600"))
	}
	ctx := namespaces.WithNamespace(context.Background(), "default")
	for i, task := range tasks {
		st, err := task.Status(ctx)
		if err != nil || st.Status != containerd.Running {
			t.Errorf("daemon %d: %+v, %v; want running", i, st, err)
		}
	}
	// Killing every process of one container (what a test's clean-up does) leaves the
	// other daemon's container of the same ID running: they share no cgroup.
	exited, err := tasks[0].Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tasks[0].Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil {
		t.Fatal(err)
	}
	<-exited
	// runc signals every process of the cgroup before it returns, and the first one's
	// exit has been reported since: a process killed with it is dead (a zombie) by now.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tasks[1].Pid()))
	if i := bytes.LastIndexByte(stat, ')'); err != nil || i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		t.Errorf("the other daemon's container was killed too: %q, %v", stat, err)
	}
}

// A daemon's clean-up kills only its own strays: a daemon whose directory name starts
// with this one's is another daemon.
func TestStraysAreThisDaemonsOnly(t *testing.T) {
	dir := "/tmp/pa-ctrd-12"
	for cmdline, want := range map[string]bool{
		"containerd-shim-runc-v2\x00-address\x00/tmp/pa-ctrd-12/containerd.sock\x00":  true,
		"containerd\x00--root\x00/tmp/pa-ctrd-12\x00":                                 true,
		"containerd\x00--root\x00/tmp/pa-ctrd-12":                                     true,
		"containerd-shim-runc-v2\x00-address\x00/tmp/pa-ctrd-123/containerd.sock\x00": false,
		"sleep\x00600\x00": false,
	} {
		if got := mentions(cmdline, dir); got != want {
			t.Errorf("%q: %v, want %v", cmdline, got, want)
		}
	}
}

// A daemon's clean-up unmounts what its CRI plugin left mounted under its directory,
// and only that.
func TestMountsUnderTheDaemonsDirectory(t *testing.T) {
	info := `36 25 0:32 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
812 30 0:95 / /tmp/pa-ctrd-12/state/io.containerd.grpc.v1.cri/sandboxes/8aa5/shm rw - tmpfs shm rw,size=65536k
813 30 0:96 / /tmp/pa-ctrd-123/state/io.containerd.grpc.v1.cri/sandboxes/7f35/shm rw - tmpfs shm rw,size=65536k
814 30 0:97 / /tmp/pa-ctrd-12 rw - tmpfs tmpfs rw`
	got := mountsUnder(info, "/tmp/pa-ctrd-12")
	want := []string{"/tmp/pa-ctrd-12/state/io.containerd.grpc.v1.cri/sandboxes/8aa5/shm"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%q, want %q", got, want)
	}
}
