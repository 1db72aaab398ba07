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
