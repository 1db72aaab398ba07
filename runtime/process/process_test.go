package process

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func execIn(t *testing.T, timeout time.Duration, argv ...string) (code int, out string, took time.Duration, err error) {
	t.Helper()
	tg := &Target{Env: append(os.Environ(), "FOO=bar")}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var buf bytes.Buffer
	start := time.Now()
	code, err = tg.Exec(ctx, argv, &buf)
	return code, buf.String(), time.Since(start), err
}

func TestExecRealProcesses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		argv []string
		code int
		out  string
	}{
		{"success", []string{"true"}, 0, ""},
		{"exit code and both streams", []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, 3, "out\nerr\n"},
		{"container environment", []string{"sh", "-c", "echo $FOO"}, 0, "bar\n"},
		{"missing binary", []string{"/nonexistent/probe"}, 127, "no such file"},
		{"not on PATH", []string{"no-such-probe-command"}, 127, "executable file not found"},
	}
	noExec := t.TempDir() + "/probe.sh"
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, struct {
		name string
		argv []string
		code int
		out  string
	}{"not executable", []string{noExec}, 126, "permission denied"})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, out, _, err := execIn(t, 5*time.Second, tc.argv...)
			if err != nil || code != tc.code || !strings.Contains(out, tc.out) {
				t.Fatalf("code %d out %q err %v, want %d ...%q...", code, out, err, tc.code, tc.out)
			}
		})
	}
}

func TestExecBackgroundChildDoesNotBlock(t *testing.T) {
	t.Parallel()
	code, _, took, err := execIn(t, 5*time.Second, "sh", "-c", "sleep 10 & exit 1")
	if err != nil || code != 1 || took > time.Second {
		t.Fatalf("sleep 10 & exit 1: code %d err %v after %v, want exit 1 at once", code, err, took)
	}
	code, out, took, err := execIn(t, 5*time.Second, "sh", "-c", "sleep 10 & echo started")
	if err != nil || code != 0 || out != "started\n" || took > time.Second {
		t.Fatalf("background child holding stdout: code %d out %q err %v after %v", code, out, err, took)
	}
}

// processesInGroup lists the live processes of a process group.
func processesInGroup(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid {
			data, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			if fields := strings.Fields(string(data)); len(fields) > 2 && fields[2] != "Z" {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func TestExecTimeoutKillsWholeGroup(t *testing.T) {
	t.Parallel()
	pidFile := t.TempDir() + "/pid"
	code, _, took, err := execIn(t, 300*time.Millisecond, "sh", "-c", "echo $$ > "+pidFile+"; sleep 30 & sleep 30")
	if err != context.DeadlineExceeded || code != -1 {
		t.Fatalf("code %d err %v, want a deadline error", code, err)
	}
	if took > 2*time.Second {
		t.Fatalf("timeout took %v", took)
	}
	data, _ := os.ReadFile(pidFile)
	pgid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pgid == 0 {
		t.Fatal("no pid recorded")
	}
	await.Until(t, 2*time.Second, "every process of the probe's group to end", func() bool { return len(processesInGroup(pgid)) == 0 },
		func() string { return fmt.Sprint("survivors: ", processesInGroup(pgid)) })
}

func svc(t *testing.T, containers ...service.Container) *service.Service {
	t.Helper()
	s := &service.Service{Metadata: service.Metadata{Name: "t"}, Containers: containers}
	for i := range s.Containers {
		c := &s.Containers[i]
		c.SetDefaults()
		if err := c.Validate("containers["+strconv.Itoa(i)+"]", service.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func next(t *testing.T, ch <-chan runtime.Event, want runtime.EventType, name string) runtime.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.Type == want && ev.Name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", want, name)
		}
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	s := svc(t,
		service.Container{Name: "sleeper", Command: "sleep 30"},
		service.Container{Name: "stubborn", Command: `sh -c 'trap "" TERM; sleep 30'`},
		service.Container{Name: "broken", Command: "/nonexistent/server --port 1"},
		service.Container{Name: "quitter", Command: "sh -c 'exit 7'", Env: []service.EnvVar{{Name: "X", Value: "1"}}},
	)
	rt, err := New(s, Options{ShutdownGrace: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan runtime.Event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- rt.Run(ctx, events) }()

	if ev := next(t, events, runtime.Added, "sleeper"); !ev.Container.Owned || ev.Container.Spec.Name != "sleeper" {
		t.Fatalf("added %+v", ev.Container)
	}
	st := next(t, events, runtime.Started, "sleeper")
	if st.PID == 0 || st.Instance != "sleeper.1" {
		t.Fatalf("started %+v", st)
	}
	if ev := next(t, events, runtime.StartFailed, "broken"); ev.Err == nil || !strings.Contains(ev.Err.Error(), "no such file") {
		t.Fatalf("start failure %+v", ev)
	}
	if ev := next(t, events, runtime.Exited, "quitter"); ev.ExitCode != 7 {
		t.Fatalf("quitter exit %d", ev.ExitCode)
	}

	start := time.Now()
	if err := rt.Stop(context.Background(), "sleeper", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events, runtime.Exited, "sleeper"); ev.ExitCode != 143 || time.Since(start) > 2*time.Second {
		t.Fatalf("SIGTERM stop: exit %d after %v", ev.ExitCode, time.Since(start))
	}
	if err := rt.Start(context.Background(), "sleeper"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events, runtime.Started, "sleeper"); ev.Instance != "sleeper.2" || ev.PID == st.PID {
		t.Fatalf("restart %+v", ev)
	}
	if err := rt.Start(context.Background(), "sleeper"); err == nil {
		t.Fatal("started a running container twice")
	}

	start = time.Now()
	rt.Stop(context.Background(), "stubborn", 300*time.Millisecond)
	ev := next(t, events, runtime.Exited, "stubborn")
	if took := time.Since(start); ev.ExitCode != 137 || took < 300*time.Millisecond || took > 3*time.Second {
		t.Fatalf("stubborn: exit %d after %v, want SIGKILL after the grace period", ev.ExitCode, took)
	}

	// Shutdown stops what runs and waits for it.
	cancel()
	go func() {
		for range events {
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after shutdown")
	}
	if err := syscall.Kill(st.PID, 0); err == nil {
		t.Fatal("container left running after shutdown")
	}
	close(events)
}

func TestValidateNeedsCommand(t *testing.T) {
	t.Parallel()
	err := Validate(&service.Service{Containers: []service.Container{{Name: "a"}}})
	if err == nil || err.Error() != "containers[0].command: required by the process runtime" {
		t.Fatalf("got %v", err)
	}
}

func TestDialRefusedSaysWhatListens(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testsock.RefusingPort(t)))
	_, err = (&Target{}).DialContext(context.Background(), "tcp", addr)
	if err == nil || !strings.Contains(err.Error(), "nothing listens on") || !strings.Contains(err.Error(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)) {
		t.Fatalf("got %v", err)
	}
}
