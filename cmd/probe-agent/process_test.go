package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
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

// sleepPIDs returns the live processes whose command line is "sleep <arg>".
func sleepPIDs(arg string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if string(cmdline) == "sleep\x00"+arg+"\x00" && !strings.Contains(string(stat), ") Z ") {
			out = append(out, pid)
		}
	}
	return out
}

// TestProcessRuntimeAgentKilledAndRestarted: the process runtime keeps its promises
// across an agent killed with SIGKILL. What the dead agent's container started is
// killed by the next agent on the same state dir; restart counts carry on; instance
// IDs are never reused.
func TestProcessRuntimeAgentKilledAndRestarted(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	a, b := strconv.Itoa(100000+rand.IntN(900000)), strconv.Itoa(100000+rand.IntN(900000))
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
			len(sleepPIDs(a)) == 1 && len(sleepPIDs(b)) == 1
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
	orphans := append(sleepPIDs(a), sleepPIDs(b)...)
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	for _, p := range orphans {
		if syscall.Kill(p, 0) != nil {
			t.Fatalf("sleep %d died with the agent; this test needs it orphaned", p)
		}
	}

	_, addr = agentProcess(t, cfg, stateDir)
	await.Until(t, 20*time.Second, "the dead agent's leftovers killed", func() bool {
		for _, p := range orphans {
			if syscall.Kill(p, 0) == nil && processState(p) != "Z" {
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

// processState is the state letter of /proc/<pid>/stat, "" when it is gone.
func processState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}
