package containerd

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestProcStartTime(t *testing.T) {
	t.Parallel()
	before := time.Now()
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	started, ok := procStartTime(cmd.Process.Pid)
	if !ok {
		t.Fatal("no start time")
	}
	if d := started.Sub(before); d < -20*time.Millisecond || d > 200*time.Millisecond {
		t.Fatalf("start time off by %v", d)
	}
	if _, ok := procStartTime(os.Getpid() + 1<<22); ok {
		t.Fatal("start time for a process that does not exist")
	}
}
