package runtime

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/service"
)

func TestShouldRestart(t *testing.T) {
	t.Parallel()
	cases := []struct {
		p       service.RestartPolicy
		code    int
		byProbe bool
		want    bool
	}{
		{service.RestartAlways, 0, false, true},
		{service.RestartAlways, 1, false, true},
		{service.RestartAlways, 137, true, true},
		{service.RestartOnFailure, 0, false, false},
		{service.RestartOnFailure, 2, false, true},
		{service.RestartOnFailure, 0, true, true},
		{service.RestartNever, 1, false, false},
		{service.RestartNever, 137, true, false},
	}
	for _, tc := range cases {
		if got := ShouldRestart(tc.p, tc.code, tc.byProbe); got != tc.want {
			t.Errorf("ShouldRestart(%s, %d, %v) = %v", tc.p, tc.code, tc.byProbe, got)
		}
	}
}

func TestBackoffSequence(t *testing.T) {
	t.Parallel()
	b := Backoff{Initial: 10 * time.Second, Max: 300 * time.Second}
	t0 := time.Unix(1_000_000, 0)
	now := t0
	var got []time.Duration
	for range 8 {
		wait := b.Next(now)
		got = append(got, wait)
		now = now.Add(wait + time.Second) // restarted, crashed a second later
	}
	want := []time.Duration{0, 10, 20, 40, 80, 160, 300, 300}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want %v (seconds)", got, want)
		}
	}
}

func TestBackoffResetsAfterTenMinutesRunning(t *testing.T) {
	t.Parallel()
	b := Backoff{Initial: 10 * time.Second, Max: 300 * time.Second}
	t0 := time.Unix(1_000_000, 0)
	b.Next(t0)
	if w := b.Next(t0.Add(time.Minute)); w != 10*time.Second {
		t.Fatalf("second crash waits %v", w)
	}
	if w := b.Next(t0.Add(time.Minute + 9*time.Minute)); w != 20*time.Second {
		t.Fatalf("crash after 9 minutes waits %v, want 20s (no reset yet)", w)
	}
	if w := b.Next(t0.Add(10*time.Minute + 10*time.Minute + time.Second)); w != 0 {
		t.Fatalf("crash after more than 10 minutes waits %v, want an immediate restart", w)
	}
	if w := b.Next(t0.Add(21 * time.Minute)); w != 10*time.Second {
		t.Fatalf("after a reset the next wait is %v, want 10s", w)
	}
	b.Reset()
	if w := b.Next(t0.Add(22 * time.Minute)); w != 0 {
		t.Fatalf("after Reset: %v", w)
	}
}

func TestBackoffInitialAboveMax(t *testing.T) {
	t.Parallel()
	b := Backoff{Initial: time.Minute, Max: 30 * time.Second}
	t0 := time.Unix(0, 0)
	b.Next(t0)
	if w := b.Next(t0.Add(time.Second)); w != 30*time.Second {
		t.Fatalf("wait %v, want capped at max", w)
	}
}

// A process's environment is read as it started with it: set, unset, a zombie's, and
// gone.
func TestProcEnv(t *testing.T) {
	t.Setenv("PROBE_AGENT_TEST_ENV", "a=b")
	cmd := exec.Command("sleep", "30")
	cmd.Env = append(os.Environ(), "PROBE_AGENT_TEST_CHILD=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// Start returns once the close-on-exec pipe closes, which is before execve has set
	// up the new environment: until then it reads empty, as the runtime's callers expect.
	await.Until(t, 5*time.Second, "the child's execve to finish", func() bool {
		_, _, err := ProcEnv(pid, "PROBE_AGENT_TEST_ENV")
		return !errors.Is(err, ErrNoEnviron)
	})
	if v, found, err := ProcEnv(pid, "PROBE_AGENT_TEST_ENV"); err != nil || !found || v != "a=b" {
		t.Errorf("set: %q %v %v", v, found, err)
	}
	if _, found, err := ProcEnv(pid, "PROBE_AGENT_TEST"); err != nil || found {
		t.Errorf("a prefix of a name: %v %v", found, err)
	}
	_ = cmd.Process.Kill()
	await.Until(t, 5*time.Second, "the killed child to read as a zombie", func() bool {
		_, _, err := ProcEnv(pid, "PROBE_AGENT_TEST_ENV")
		return errors.Is(err, syscall.ESRCH)
	})
	_ = cmd.Wait()
	if _, _, err := ProcEnv(pid, "PROBE_AGENT_TEST_ENV"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("gone: %v", err)
	}
}

// A pid list reads as the kernel writes one (children: "12 34 "; cgroup.procs: one a
// line); one that cannot be read is empty.
func TestPids(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for text, want := range map[string][]int{"12 34 ": {12, 34}, "5\n6\n": {5, 6}, "": nil} {
		p := dir + "/pids"
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := Pids(p); !slices.Equal(got, want) {
			t.Errorf("%q: %v, want %v", text, got, want)
		}
	}
	if got := Pids(dir + "/missing"); got != nil {
		t.Errorf("a missing file: %v", got)
	}
}
