package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testproc"
)

// agentProcess runs the probe-agent command as a process of its own on the process
// runtime, with a state dir, and returns it with its status address.
func agentProcess(t *testing.T, cfg, stateDir string) (*exec.Cmd, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(os.Args[0], "run", "--config", cfg, "--state-dir", stateDir, "--listen", addr,
		"--restart-backoff", "100ms")
	cmd.Env = append(os.Environ(), asAgent+"=1")
	// A file, not a pipe: processes the agent leaves behind keep their output open.
	logs, err := os.CreateTemp(t.TempDir(), "agent-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logs.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("agent logs:\n%s", b)
		}
	})
	return cmd, addr
}

func containers(addr string) []map[string]any {
	resp, err := http.Get("http://" + addr + "/v1/containers")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var list []map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&list)
	return list
}

// TestProcessRuntimeAgentKilledAndRestarted: the process runtime keeps its promises
// across an agent killed with SIGKILL. What the dead agent's container started is
// killed by the next agent on the same state dir; restart counts carry on; instance
// IDs are never reused.
func TestProcessRuntimeAgentKilledAndRestarted(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	a, b := testproc.UniqueSleep(), testproc.UniqueSleep()
	once := filepath.Join(dir, "once")
	cfg := filepath.Join(dir, "service.json")
	// The container's liveness fails once, so that it has been restarted once; each
	// instance starts two sleeps in the background.
	doc := fmt.Sprintf(`{"metadata":{"name":"kill"},"containers":[{"name":"c","command":"sh -c 'sleep %s & sleep %s & wait'",
		"liveness_check":{"exec":{"command":["sh","-c","test -f %s || { touch %s; exit 1; }"]},"period_seconds":0.1,
		"termination_grace_period_seconds":2}}]}`, a, b, once, once)
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	first, addr := agentProcess(t, cfg, stateDir)
	var list []map[string]any
	await.Until(t, 20*time.Second, "restarted once, running, its sleeps up", func() bool {
		list = containers(addr)
		return len(list) == 1 && list[0]["restart_count"] == 1.0 && list[0]["state"] == "running" &&
			len(testproc.Find("sleep", a)) == 1 && len(testproc.Find("sleep", b)) == 1
	}, func() string { return fmt.Sprint(list) })
	firstID := list[0]["id"]
	// The state is written within 200 ms of a change; kill the agent once it is.
	await.Until(t, 5*time.Second, "the restart saved", func() bool {
		var s struct {
			Containers map[string]struct {
				RestartCount int `json:"restart_count"`
			} `json:"containers"`
		}
		data, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
		return err == nil && json.Unmarshal(data, &s) == nil && s.Containers["c"].RestartCount == 1
	})
	orphans := append(testproc.Find("sleep", a), testproc.Find("sleep", b)...)
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	for _, p := range orphans {
		if !testproc.Alive(p) {
			t.Fatalf("sleep %d died with the agent; this test needs it orphaned", p)
		}
	}

	_, addr = agentProcess(t, cfg, stateDir)
	await.Until(t, 20*time.Second, "the dead agent's leftovers killed", func() bool {
		for _, p := range orphans {
			if testproc.Alive(p) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprint("still there: ", orphans) })
	await.Until(t, 20*time.Second, "running again", func() bool {
		list = containers(addr)
		return len(list) == 1 && list[0]["state"] == "running"
	}, func() string { return fmt.Sprint(list) })
	if list[0]["restart_count"] != 1.0 || list[0]["id"] == firstID || list[0]["id"] == "c.1" {
		t.Fatalf("after the agent restart: restart_count %v, id %v (was %v); want the count kept and a new id",
			list[0]["restart_count"], list[0]["id"], firstID)
	}
}
