package process

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testproc"
)

// escapingCommand starts a child that leaves the process group (setsid), one that
// stays, and waits.
func escapingCommand(a, b string) *exec.Cmd {
	cmd := exec.Command("sh", "-c", "setsid sleep "+a+" & sleep "+b+" & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// groupKinds are the kinds of group this host offers, each tried on its own.
func groupKinds(t *testing.T) map[string]*groups {
	t.Helper()
	name := fmt.Sprintf("probe-agent-test-%d-%d", os.Getpid(), rand.Int64())
	kinds := map[string]*groups{kindMarker: {kind: kindMarker, root: name}}
	if mnt, own, ok := cgroup2Mount(); ok {
		gs := &groups{kind: kindCgroup2, root: filepath.Join(mnt, own, name)}
		if gs.usable() == nil {
			kinds[kindCgroup2] = gs
		}
	}
	if mnt, own, ok := freezerMount(); ok {
		gs := &groups{kind: kindFreezer, root: filepath.Join(mnt, own, name), home: filepath.Join(mnt, own)}
		if gs.usable() == nil {
			kinds[kindFreezer] = gs
		}
	}
	for _, gs := range kinds {
		t.Cleanup(gs.close)
	}
	return kinds
}

// TestGroupKillsEscapedDescendants: on every kind of group this host offers, killing a
// group ends the descendants that left the process group, and a later runtime with
// the same state dir kills what an earlier one left behind.
func TestGroupKillsEscapedDescendants(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: only the marker kind can be tried")
	}
	chosen, err := newGroups(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	chosen.close()
	t.Logf("this host's groups: %s", chosen.kind)
	for kind, gs := range groupKinds(t) {
		t.Run(kind, func(t *testing.T) {
			a, b := testproc.UniqueSleep(), testproc.UniqueSleep()
			g, err := gs.new("c")
			if err != nil {
				t.Fatal(err)
			}
			cmd := escapingCommand(a, b)
			if err := g.start(cmd); err != nil {
				t.Fatal(err)
			}
			go cmd.Wait() //nolint:errcheck // reaped when killed
			await.Until(t, 5*time.Second, "both sleeps running", func() bool { return len(testproc.Find("sleep", a)) == 1 && len(testproc.Find("sleep", b)) == 1 })
			if err := g.kill(); err != nil {
				t.Fatal(err)
			}
			await.Until(t, 5*time.Second, "every process of the group gone", func() bool { return len(testproc.Find("sleep", a))+len(testproc.Find("sleep", b)) == 0 },
				func() string { return fmt.Sprint(testproc.Find("sleep", a), testproc.Find("sleep", b)) })

			// What an agent killed with -9 leaves: a group with a process in it.
			left, err := gs.new("c")
			if err != nil {
				t.Fatal(err)
			}
			cmd = escapingCommand(a, b)
			if err := left.start(cmd); err != nil {
				t.Fatal(err)
			}
			go cmd.Wait() //nolint:errcheck
			await.Until(t, 5*time.Second, "both sleeps running", func() bool { return len(testproc.Find("sleep", a)) == 1 && len(testproc.Find("sleep", b)) == 1 })
			next := &groups{kind: gs.kind, root: gs.root, home: gs.home, named: true}
			if n := next.killLeftovers(); n != 1 {
				t.Errorf("%d groups left behind found, want 1", n)
			}
			await.Until(t, 5*time.Second, "the leftovers killed", func() bool { return len(testproc.Find("sleep", a))+len(testproc.Find("sleep", b)) == 0 })
		})
	}
}

// TestExecKillsWhatTheProbeLeft: an exec probe whose command starts a child that calls
// setsid leaves nothing behind.
func TestExecKillsWhatTheProbeLeft(t *testing.T) {
	t.Parallel()
	gs, err := newGroups("")
	if err != nil {
		t.Fatal(err)
	}
	defer gs.close()
	a := testproc.UniqueSleep()
	tg := &Target{Env: os.Environ(), groups: gs}
	// The probe exits once its child is in a session of its own.
	flag := filepath.Join(t.TempDir(), "in-own-session")
	script := "setsid sh -c 'touch " + flag + "; exec sleep " + a + "' & while [ ! -e " + flag + " ]; do sleep 0.01; done; exit 0"
	code, err := tg.Exec(context.Background(), []string{"sh", "-c", script}, io.Discard)
	if code != 0 || err != nil {
		t.Fatalf("exec: %d %v", code, err)
	}
	if left := testproc.Find("sleep", a); len(left) != 0 {
		for _, p := range left {
			syscall.Kill(p, syscall.SIGKILL)
		}
		t.Fatalf("the probe's setsid child survived it (%s groups): %v", gs.kind, left)
	}
}
