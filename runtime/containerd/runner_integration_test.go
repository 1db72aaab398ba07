package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testproc"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

// pathCounts counts the paths a target's execs took.
type pathCounts struct{ runner, exec atomic.Int64 }

func (p *pathCounts) count(path string) {
	if path == "runner" {
		p.runner.Add(1)
	} else {
		p.exec.Add(1)
	}
}

// execTarget returns a target for a running container, with runners on or off.
func execTarget(t testing.TB, client *containerd.Client, ns, id string, task containerd.Task, withRunner bool, paths *pathCounts) *target {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	c, err := client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wg := &sync.WaitGroup{}
	tg := &target{client: client, ns: ns, id: id, pid: int(task.Pid()), process: spec.Process,
		fifoDir: t.TempDir(), cleanup: wg, path: paths.count}
	if withRunner {
		tg.runners = &runners{note: func(reason string) { t.Logf("runner: %s", reason) }}
	}
	t.Cleanup(func() {
		if tg.runners != nil {
			tg.runners.close()
		}
		wg.Wait()
	})
	return tg
}

// runnerContainer starts a daemon and a busybox container id (rootfs built when ""),
// and returns the container's task and a target with runners on.
func runnerContainer(t *testing.T, id, rootfs string) (containerd.Task, *target, *pathCounts) {
	t.Helper()
	ctrdtest.Require(t)
	d := ctrdtest.Start(t)
	client := d.Client(t)
	if rootfs == "" {
		rootfs = ctrdtest.Rootfs(t)
	}
	task := ctrdtest.RunContainer(t, client, "default", id, rootfs, nil, "sleep", "600")
	paths := &pathCounts{}
	return task, execTarget(t, client, "default", id, task, true, paths), paths
}

// onRunner runs argv until it went through the runner (the first exec starts it).
func onRunner(t testing.TB, tg *target, paths *pathCounts, argv ...string) (int, string) {
	t.Helper()
	var code int
	var out outBuf
	await.Until(t, 20*time.Second, "an exec on the runner", func() bool {
		before := paths.runner.Load()
		out.Reset()
		var err error
		code, err = tg.Exec(t.Context(), argv, &out)
		if err != nil {
			t.Fatalf("%q: %v", argv, err)
		}
		return paths.runner.Load() > before
	})
	return code, out.String()
}

// containerProcs lists the container's processes other than init and the runners.
func containerProcs(t *testing.T, task containerd.Task, runners ...int) []string {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	ps, err := task.Pids(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range ps {
		pid := int(p.Pid)
		if pid == int(task.Pid()) || slices.Contains(runners, pid) {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		out = append(out, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(cmd), "\x00", " ")))
	}
	return out
}

// idleRunnerPIDs returns the host pids of the target's idle runners.
func idleRunnerPIDs(tg *target) []int {
	tg.runners.mu.Lock()
	defer tg.runners.mu.Unlock()
	var out []int
	for _, r := range tg.runners.idle {
		out = append(out, r.hostPID)
	}
	return out
}

// A command forked by the runner runs exactly as one exec'd by containerd: the same
// user and groups, capabilities, no_new_privs, seccomp mode, rlimits and cgroup, read
// from inside, on two locked-down containers, both with no_new_privs and containerd's
// default seccomp profile: a non-root user with extra groups, and root with all but two
// capabilities dropped (so that the effective set is not empty).
func TestIntegrationRunnerKeepsTheIsolationOfAnExec(t *testing.T) {
	ctrdtest.Require(t)
	d := ctrdtest.Start(t)
	client := d.Client(t)
	rootfs := ctrdtest.Rootfs(t)
	withGroups := func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.User.AdditionalGids = []uint32{1001, 1002}
		return nil
	}
	for _, c := range []struct {
		id        string
		user      oci.SpecOpts
		uid, caps string
	}{
		{"nonroot", oci.Compose(oci.WithUIDGID(1000, 1000), withGroups), "1000", "0000000000000000"},
		{"root", oci.WithUIDGID(0, 0), "0", "0000000000000420"},
	} {
		task := ctrdtest.RunContainerSpec(t, client, "default", c.id, nil,
			oci.WithRootFSPath(rootfs), oci.WithDefaultPathEnv, oci.WithProcessArgs("sleep", "600"), c.user,
			oci.WithCapabilities([]string{"CAP_NET_BIND_SERVICE", "CAP_KILL"}), oci.WithNoNewPrivileges,
			seccomp.WithDefaultProfile(), oci.WithEnv([]string{"PROBE_TEST=1"}))
		var paths pathCounts
		plain := execTarget(t, client, "default", c.id, task, false, &paths)
		withRunner := execTarget(t, client, "default", c.id, task, true, &paths)

		argv := []string{"sh", "-c", "cat /proc/self/status /proc/self/cgroup /proc/self/limits; echo PROBE_TEST=$PROBE_TEST; id; pwd"}
		var want outBuf
		if code, err := plain.Exec(t.Context(), argv, &want); err != nil || code != 0 {
			t.Fatalf("%s: containerd exec: %d %v %s", c.id, code, err, want.String())
		}
		code, got := onRunner(t, withRunner, &paths, argv...)
		if code != 0 {
			t.Fatalf("%s: runner: exit %d: %s", c.id, code, got)
		}
		w, g := isolation(want.String()), isolation(got)
		t.Logf("%s, containerd exec: %v", c.id, w)
		if !strings.HasPrefix(w["Uid"], c.uid+"\t") || w["CapEff"] != c.caps || w["NoNewPrivs"] != "1" || w["Seccomp"] != "2" ||
			(c.uid != "0" && !strings.Contains(w["Groups"], "1001")) {
			t.Fatalf("%s: the container is not locked down as the test means: %v", c.id, w)
		}
		if fmt.Sprint(w) != fmt.Sprint(g) {
			t.Fatalf("%s: runner child differs from a containerd exec:\nexec   %v\nrunner %v", c.id, w, g)
		}
	}
}

// isolation picks what defines a process's isolation from its /proc status, cgroup and
// limits, its environment variable and its id and working directory.
func isolation(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		switch {
		case ok && slices.Contains([]string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"}, k):
			m[k] = strings.TrimSpace(v)
		case strings.Contains(line, ":/"): // a cgroup line
			m["cgroup "+k] = line
		case strings.HasPrefix(line, "Max ") || strings.HasPrefix(line, "PROBE_TEST=") || strings.HasPrefix(line, "uid=") || strings.HasPrefix(line, "/"):
			m[line] = line
		}
	}
	return m
}

// Hostile commands leave the runner serving, leave nothing behind in the container and
// keep the agent's memory bounded: 50 MB of output, 200 children, a child in a session
// of its own, a command that ignores SIGTERM (the last three past their timeout, and
// again finishing with their children still running).
func TestIntegrationRunnerSurvivesHostileCommands(t *testing.T) {
	task, tg, paths := runnerContainer(t, "hostile", "")
	onRunner(t, tg, paths, "true")
	runners := idleRunnerPIDs(tg)
	if len(runners) != 1 {
		t.Fatalf("runners %v", runners)
	}
	var before goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	for _, c := range []struct {
		name    string
		script  string
		timeout time.Duration
		code    int
	}{
		{"50 MB of output", "head -c 50000000 /dev/zero | tr '\\0' x; exit 4", 30 * time.Second, 4},
		{"200 children past the timeout", "for i in $(seq 200); do sleep 600 & done; sleep 600", 2 * time.Second, -1},
		{"200 children left running", "for i in $(seq 200); do sleep 600 & done; exit 0", 10 * time.Second, 0},
		{"setsid child past the timeout", "setsid sleep 600 & sleep 600", time.Second, -1},
		{"setsid child left running", "setsid sh -c 'sleep 600 & sleep 600' & sleep 0.2; exit 0", 10 * time.Second, 0},
		{"ignores SIGTERM", "trap '' TERM; sleep 600 & wait; wait", time.Second, -1},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), c.timeout)
		out := outBuf{limit: prober.MaxOutput}
		before := paths.runner.Load()
		code, err := tg.Exec(ctx, []string{"sh", "-c", c.script}, &out)
		cancel()
		switch {
		case paths.runner.Load() == before:
			t.Fatalf("%s: not run on the runner", c.name)
		case c.code < 0 && !errors.Is(err, context.DeadlineExceeded):
			t.Fatalf("%s: %d %v, want the deadline", c.name, code, err)
		case c.code >= 0 && (err != nil || code != c.code):
			t.Fatalf("%s: %d %v, want exit %d", c.name, code, err, c.code)
		}
		await.Until(t, 10*time.Second, c.name+": nothing left behind", func() bool {
			return len(containerProcs(t, task, runners...)) == 0
		}, func() string { return strings.Join(containerProcs(t, task, runners...), "\n") })
		if got := idleRunnerPIDs(tg); fmt.Sprint(got) != fmt.Sprint(runners) {
			t.Fatalf("%s: runners %v, want %v still serving", c.name, got, runners)
		}
	}
	var after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 8<<20 {
		t.Fatalf("heap grew by %d bytes", grew)
	}
	if code, out := onRunner(t, tg, paths, "echo", "still here"); code != 0 || out != "still here\n" {
		t.Fatalf("after the hostile commands: %d %q", code, out)
	}
}

// A runner that dies (a container process killed it) costs no probe: the next one goes
// through containerd exec at once, the reason is logged once, and a new runner serves
// after the back-off.
func TestIntegrationRunnerRestartedAfterACrash(t *testing.T) {
	_, tg, paths := runnerContainer(t, "crash", "")
	var notes []string
	var mu sync.Mutex
	tg.runners.note = func(reason string) {
		mu.Lock()
		defer mu.Unlock()
		notes = append(notes, reason)
	}
	onRunner(t, tg, paths, "true")
	first := idleRunnerPIDs(tg)[0]
	// From inside, as a container process would: the runner is the probe's parent.
	if code, err := tg.Exec(t.Context(), []string{"sh", "-c", `[ "$PPID" = 0 ] || kill -9 $PPID; sleep 0.2; exit 3`}, &outBuf{}); err != nil || code != 3 {
		t.Fatalf("the probe that killed its runner: %d %v; want its own exit status, through containerd exec", code, err)
	}
	execsBefore := paths.exec.Load()
	var out outBuf
	if code, err := tg.Exec(t.Context(), []string{"echo", "ok"}, &out); err != nil || code != 0 || out.String() != "ok\n" {
		t.Fatalf("after the crash: %d %v %q", code, err, out.String())
	}
	if paths.exec.Load() != execsBefore+1 {
		t.Fatal("the probe after the crash did not go through containerd exec (back-off)")
	}
	onRunner(t, tg, paths, "true")
	if pids := idleRunnerPIDs(tg); len(pids) != 1 || pids[0] == first {
		t.Fatalf("runners %v after the crash of %d", pids, first)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notes) != 1 || !strings.Contains(notes[0], "exited") {
		t.Fatalf("notes %q, want one saying the runner exited", notes)
	}
}

// An image without a shell (distroless) runs every exec probe through containerd
// exec, with one note, and never tries to start a runner again.
func TestIntegrationRunnerNoShellFallsBack(t *testing.T) {
	ctrdtest.Require(t)
	rootfs := ctrdtest.Rootfs(t)
	if err := os.Remove(rootfs + "/bin/sh"); err != nil {
		t.Fatal(err)
	}
	_, tg, paths := runnerContainer(t, "distroless", rootfs)
	var notes atomic.Int64
	tg.runners.note = func(reason string) {
		notes.Add(1)
		t.Logf("note: %s", reason)
	}
	for range 5 {
		var out outBuf
		if code, err := tg.Exec(t.Context(), []string{"echo", "ok"}, &out); err != nil || code != 0 || out.String() != "ok\n" {
			t.Fatalf("%d %v %q", code, err, out.String())
		}
	}
	if paths.runner.Load() != 0 || paths.exec.Load() != 5 || notes.Load() != 1 {
		t.Fatalf("runner %d, exec %d, notes %d; want 0, 5, 1", paths.runner.Load(), paths.exec.Load(), notes.Load())
	}
}

// The runtime ends a runner with its container instance and all of them when it stops;
// a container whose entry says "exec_runner": false never gets one.
func TestIntegrationRunnerLifecycleInTheRuntime(t *testing.T) {
	ctrdtest.Require(t)
	d := ctrdtest.Start(t)
	client := d.Client(t)
	rootfs := ctrdtest.Rootfs(t)
	checks := `{"liveness_check":{"exec":{"command":["true"]}}}`
	web := ctrdtest.RunContainer(t, client, "default", "web", rootfs, map[string]string{LabelChecks: checks}, "sleep", "600")
	ctrdtest.RunContainer(t, client, "default", "api", rootfs, map[string]string{LabelChecks: checks}, "sleep", "600")
	ctrdtest.RunContainer(t, client, "default", "plain", rootfs,
		map[string]string{LabelChecks: `{"exec_runner":false,"liveness_check":{"exec":{"command":["true"]}}}`}, "sleep", "600")
	r, err := New(Options{Address: d.Address, StateDir: t.TempDir(), RuntimeDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var paths pathCounts
	r.ReportExecPaths(paths.count)
	events := make(chan runtime.Event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = r.Run(ctx, events)
		close(done)
	}()
	defer func() { cancel(); <-done }()
	go func() {
		for {
			select {
			case <-events:
			case <-done:
				return
			}
		}
	}()
	targets := map[string]*target{}
	for _, name := range []string{"web", "api", "plain"} {
		await.Until(t, 10*time.Second, name+" running", func() bool {
			tg, err := r.Target(name)
			if err == nil {
				targets[name] = tg.(*target)
			}
			return err == nil
		})
	}
	if targets["plain"].runners != nil {
		t.Fatal(`"exec_runner": false: the container has runners`)
	}
	for _, name := range []string{"web", "api"} {
		onRunner(t, targets[name], &paths, "true")
	}
	webRunner, apiRunner := idleRunnerPIDs(targets["web"])[0], idleRunnerPIDs(targets["api"])[0]

	nctx := namespaces.WithNamespace(context.Background(), "default")
	if err := web.Kill(nctx, 9); err != nil {
		t.Fatal(err)
	}
	await.Until(t, 10*time.Second, "web's runner gone with its instance", func() bool { return !testproc.Alive(webRunner) })
	await.Until(t, 10*time.Second, "web's runners closed", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.runners) == 1
	})
	cancel()
	<-done
	await.Until(t, 10*time.Second, "api's runner gone with the agent", func() bool { return !testproc.Alive(apiRunner) })
}

// An agent killed before it could end its runners leaves them waiting (the shim keeps
// their stdin open); the next agent ends them before starting its own.
func TestIntegrationRunnerOfAKilledAgentIsEnded(t *testing.T) {
	task, killed, paths := runnerContainer(t, "stale", "")
	onRunner(t, killed, paths, "true")
	stale := idleRunnerPIDs(killed)[0]
	next := execTarget(t, killed.client, "default", "stale", task, true, paths)
	onRunner(t, next, paths, "true")
	await.Until(t, 10*time.Second, "the earlier agent's runner ended", func() bool { return !testproc.Alive(stale) })
	if pids := idleRunnerPIDs(next); len(pids) != 1 || pids[0] == stale || !testproc.Alive(pids[0]) {
		t.Fatalf("runners %v, stale %d", pids, stale)
	}
}
