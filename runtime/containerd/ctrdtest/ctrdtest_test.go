package ctrdtest

import (
	"context"
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
	for i, task := range tasks {
		st, err := task.Status(namespaces.WithNamespace(context.Background(), "default"))
		if err != nil || st.Status != containerd.Running {
			t.Errorf("daemon %d: %+v, %v; want running", i, st, err)
		}
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
