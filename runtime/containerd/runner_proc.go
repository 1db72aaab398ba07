package containerd

import (
	"errors"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/probe-agent/probe-agent/runtime"
)

// What the runner needs from /proc: the processes of a container as the host sees
// them (the agent runs in the host's PID namespace), to kill a command that timed out
// with everything it started, and what a finished command left behind.

// statusField returns a field of a process's /proc status ("NSpid", "VmRSS").
func statusField(pid int, name string) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// lastNSpid returns a process's pid in the innermost PID namespace it belongs to.
func lastNSpid(pid int) (int, bool) {
	v, _ := statusField(pid, "NSpid")
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(f[len(f)-1])
	return n, err == nil
}

// children lists the children of every thread of pid.
func children(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []int
	for _, task := range tasks {
		out = append(out, runtime.Pids(dir+task.Name()+"/children")...)
	}
	return out
}

// childByNSpid finds the host pid of parent's child whose pid in its own namespace is
// nsPID.
func childByNSpid(parent, nsPID int) (int, bool) {
	for _, c := range children(parent) {
		if n, ok := lastNSpid(c); ok && n == nsPID {
			return c, true
		}
	}
	return 0, false
}

// killTree kills pid and all its descendants. Each is stopped before its children are
// listed, so that none can fork behind the walk; the walk is repeated until it finds
// nothing new (a fork in flight when the stop arrived shows up on the next pass). It
// returns false when the agent may not signal pid (EPERM: no CAP_KILL).
func killTree(pid int) bool {
	if err := syscall.Kill(pid, syscall.SIGSTOP); errors.Is(err, syscall.EPERM) {
		return false
	}
	seen := map[int]bool{pid: true}
	for pass := 0; pass < 4; pass++ {
		found := false
		queue := []int{pid}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if !seen[p] {
				seen[p], found = true, true
				_ = syscall.Kill(p, syscall.SIGSTOP)
			}
			queue = append(queue, children(p)...)
		}
		if !found {
			break
		}
	}
	for p := range seen {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	return true
}

// orphans lists the children of reaper (the container's init), to which the orphans of
// a finished command are given: those of the thread group leader, one file however
// many threads init has.
func orphans(reaper int) []int {
	return runtime.Pids("/proc/" + strconv.Itoa(reaper) + "/task/" + strconv.Itoa(reaper) + "/children")
}

// killLeftovers kills the children of reaper that are not in before (sorted) and whose
// environment has PROBE_AGENT_EXEC set to the request's nonce, with their descendants.
// A child whose environment cannot be read yet (it is in the middle of an execve, as
// the last children of a loop of "cmd &" may be) is looked at again, a few times, a
// few milliseconds apart.
func killLeftovers(reaper int, nonce string, before []int) {
	pending := slices.DeleteFunc(orphans(reaper), func(pid int) bool {
		_, was := slices.BinarySearch(before, pid)
		return was
	})
	for try := 0; len(pending) > 0 && try < leftoverTries; try++ {
		if try > 0 {
			time.Sleep(leftoverRetry)
		}
		var again []int
		for _, pid := range pending {
			v, found, err := runtime.ProcEnv(pid, execMarkerEnv)
			switch {
			case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH):
			case err != nil:
				again = append(again, pid)
			case found && v == nonce:
				killTree(pid)
			}
		}
		pending = again
	}
}

const (
	// execMarkerEnv is set by the runner in each command's environment to its nonce.
	execMarkerEnv = "PROBE_AGENT_EXEC"
	leftoverTries = 20
	leftoverRetry = 5 * time.Millisecond
)
