package process

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/probe-agent/probe-agent/runtime"
)

// Every container and every exec probe of the process runtime runs in a group of its
// own, so that everything it started can be killed, descendants that left its process
// group (setsid, double fork) included. Three kinds, the first that works here:
//
//   - cgroup2: a cgroup v2 directory (the unified hierarchy, also on hybrid hosts);
//     the process starts inside it (clone3 CLONE_INTO_CGROUP) and cgroup.kill ends
//     everything in it at once.
//   - freezer: a cgroup v1 freezer directory; the process is forked from a thread
//     that was moved inside, so it starts there; killing freezes the group, kills every
//     task, thaws it.
//   - marker: no writable cgroup (an unprivileged agent, a read-only /sys/fs/cgroup):
//     the process carries PROBE_AGENT_GROUP=<id> in its environment, which its
//     descendants inherit unless they clear it, and killing sweeps /proc for it.
//
// All groups of one runtime sit under one root named after the state dir, so that an
// agent started after one that died (kill -9) finds what it left behind and kills it.

// Kinds of group.
const (
	kindCgroup2 = "cgroup2"
	kindFreezer = "freezer"
	kindMarker  = "marker"
)

// markerEnv is the environment variable that marks processes of a marker group.
const markerEnv = "PROBE_AGENT_GROUP"

// unnamed numbers the groups roots of runtimes without a state dir in this process.
var unnamed atomic.Uint64

// groups makes the groups of one runtime.
type groups struct {
	kind string
	// root is the cgroup directory holding every group (cgroup kinds), or the marker
	// prefix of every group's id (marker kind).
	root string
	// home is the agent's own freezer cgroup, where a forking thread returns.
	home string
	// named says the root is the state dir's, so an earlier agent may have left
	// groups in it.
	named bool
	seq   atomic.Uint64
}

// group is one container instance's or exec probe's processes.
type group struct {
	gs *groups
	// dir is the group's cgroup directory; id its marker value.
	dir, id string
}

// newGroups finds the kind of group this host allows. key names the agent's state (the
// state dir), so that the same agent finds its groups again after a restart; without
// one the groups are this process's alone.
func newGroups(key string) (*groups, error) {
	name := "probe-agent-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(unnamed.Add(1), 10)
	if key != "" {
		sum := sha256.Sum256([]byte(key))
		name = "probe-agent-" + hex.EncodeToString(sum[:6])
	}
	named := key != ""
	if mnt, own, ok := cgroup2Mount(); ok {
		gs := &groups{kind: kindCgroup2, root: filepath.Join(mnt, own, name), named: named}
		if gs.usable() == nil {
			return gs, nil
		}
	}
	if mnt, own, ok := freezerMount(); ok {
		gs := &groups{kind: kindFreezer, root: filepath.Join(mnt, own, name), home: filepath.Join(mnt, own), named: named}
		if gs.usable() == nil {
			return gs, nil
		}
	}
	return &groups{kind: kindMarker, root: name, named: named}, nil
}

// usable creates the root and checks that a group can be made and killed there.
func (gs *groups) usable() error {
	if err := os.MkdirAll(gs.root, 0o755); err != nil {
		return err
	}
	probe := filepath.Join(gs.root, "probe")
	if err := os.Mkdir(probe, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	defer os.Remove(probe)
	need := "cgroup.kill"
	if gs.kind == kindFreezer {
		need = "freezer.state"
	}
	_, err := os.Stat(filepath.Join(probe, need))
	return err
}

// new makes a group for one container instance or exec probe.
func (gs *groups) new(name string) (*group, error) {
	id := name + "." + strconv.FormatUint(gs.seq.Add(1), 10) + "." + strconv.FormatInt(time.Now().UnixNano(), 36)
	g := &group{gs: gs, id: gs.root + "/" + id}
	if gs.kind == kindMarker {
		return g, nil
	}
	g.dir = filepath.Join(gs.root, id)
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup for %s: %w", name, err)
	}
	return g, nil
}

// start starts cmd inside the group.
func (g *group) start(cmd *exec.Cmd) error {
	switch g.gs.kind {
	case kindCgroup2:
		fd, err := syscall.Open(g.dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
		return cmd.Start()
	case kindFreezer:
		return g.startFromInside(cmd)
	}
	cmd.Env = append(cmd.Env, markerEnv+"="+g.id)
	return cmd.Start()
}

// startFromInside forks cmd from a thread moved into the freezer cgroup, so that the
// process starts inside, before it can fork anything. The thread is moved back after;
// a thread that cannot go back ends with its goroutine instead of being reused.
func (g *group) startFromInside(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		tid := []byte(strconv.Itoa(syscall.Gettid()))
		if err := os.WriteFile(filepath.Join(g.dir, "tasks"), tid, 0); err != nil {
			goruntime.UnlockOSThread()
			errc <- err
			return
		}
		err := cmd.Start()
		if os.WriteFile(filepath.Join(g.gs.home, "tasks"), tid, 0) != nil {
			errc <- err
			return // locked: the thread is destroyed
		}
		goruntime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// kill kills every process in the group and removes it.
func (g *group) kill() error {
	switch g.gs.kind {
	case kindCgroup2:
		return killCgroup2(g.dir)
	case kindFreezer:
		return killFreezer(g.dir)
	}
	return killMarked(func(v string) bool { return v == g.id })
}

// killLeftovers kills every group left under the root by an earlier agent that used the
// same state dir, and returns how many it found.
func (gs *groups) killLeftovers() int {
	if !gs.named {
		return 0
	}
	if gs.kind == kindMarker {
		found := map[string]bool{}
		_ = killMarked(func(v string) bool {
			left := strings.HasPrefix(v, gs.root+"/")
			if left {
				found[v] = true
			}
			return left
		})
		return len(found)
	}
	entries, _ := os.ReadDir(gs.root)
	n := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(gs.root, e.Name())
		kill := killCgroup2
		if gs.kind == kindFreezer {
			kill = killFreezer
		}
		if err := kill(dir); err == nil {
			n++
		}
	}
	return n
}

// close removes the root when nothing is left in it.
func (gs *groups) close() {
	if gs.kind != kindMarker {
		_ = os.Remove(gs.root)
	}
}

// groupWait bounds how long killing a group waits for it to empty.
const groupWait = 5 * time.Second

func killCgroup2(dir string) error {
	if os.Remove(dir) == nil {
		return nil // it was empty already: the usual end of an exec probe
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return removeWhenEmpty(dir)
}

func killFreezer(dir string) error {
	if os.Remove(dir) == nil {
		return nil
	}
	state := filepath.Join(dir, "freezer.state")
	if err := os.WriteFile(state, []byte("FROZEN"), 0); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for deadline := time.Now().Add(groupWait); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(state)
		if err != nil || strings.TrimSpace(string(b)) == "FROZEN" || time.Now().After(deadline) {
			break
		}
	}
	for _, pid := range pids(dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = os.WriteFile(state, []byte("THAWED"), 0)
	return removeWhenEmpty(dir)
}

// removeWhenEmpty waits for the group's processes to be gone, then removes it.
func removeWhenEmpty(dir string) error {
	deadline := time.Now().Add(groupWait)
	for len(pids(dir)) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes left after SIGKILL: %v", dir, pids(dir))
		}
		time.Sleep(time.Millisecond)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func pids(dir string) []int { return runtime.Pids(filepath.Join(dir, "cgroup.procs")) }

// killMarked kills every process whose marker value matches, until none is left (a
// process may fork while the sweep runs).
func killMarked(match func(string) bool) error {
	deadline := time.Now().Add(groupWait)
	for {
		found := false
		procs, _ := os.ReadDir("/proc")
		for _, p := range procs {
			pid, err := strconv.Atoi(p.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if v, ok := marker(pid); ok && match(v) {
				found = true
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if !found {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("processes left after SIGKILL")
		}
		time.Sleep(time.Millisecond)
	}
}

// marker reads a process's group marker from its environment; zombies have none.
func marker(pid int) (string, bool) {
	v, found, err := runtime.ProcEnv(pid, markerEnv)
	return v, found && err == nil
}

// cgroup2Mount finds the cgroup v2 hierarchy and the agent's place in it.
func cgroup2Mount() (mount, own string, ok bool) {
	mount = findMount(func(fstype, opts string) bool { return fstype == "cgroup2" })
	if mount == "" {
		return "", "", false
	}
	own, ok = ownCgroup(func(controllers string) bool { return controllers == "" }, "0")
	return mount, own, ok
}

// freezerMount finds the cgroup v1 freezer hierarchy and the agent's place in it.
func freezerMount() (mount, own string, ok bool) {
	has := func(list, c string) bool {
		for _, x := range strings.Split(list, ",") {
			if x == c {
				return true
			}
		}
		return false
	}
	mount = findMount(func(fstype, opts string) bool { return fstype == "cgroup" && has(opts, "freezer") })
	if mount == "" {
		return "", "", false
	}
	own, ok = ownCgroup(func(controllers string) bool { return has(controllers, "freezer") }, "")
	return mount, own, ok
}

// findMount returns the mount point of the first filesystem that matches, from
// /proc/self/mountinfo.
func findMount(match func(fstype, superOpts string) bool) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) >= 5 && len(b) >= 3 && match(b[0], b[2]) {
			return a[4]
		}
	}
	return ""
}

// ownCgroup returns the agent's cgroup path in the hierarchy whose controllers match
// (hierarchy id "0" for cgroup v2), from /proc/self/cgroup.
func ownCgroup(match func(controllers string) bool, id string) (string, bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && (id == "" || parts[0] == id) && match(parts[1]) {
			return parts[2], true
		}
	}
	return "", false
}
