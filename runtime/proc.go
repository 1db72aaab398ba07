package runtime

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
)

// What runtimes read of other processes from /proc (and cgroupfs).

// ErrNoEnviron means a process's environment reads empty: it is exiting, or in the
// middle of an execve (read it again a moment later).
var ErrNoEnviron = errors.New("environment empty")

// ProcEnv reads the variable name from the environment of process pid (as the process
// started with it: /proc/<pid>/environ). found is false when the variable is not set;
// an error means the environment could not be read (fs.ErrNotExist: the process is
// gone; syscall.ESRCH: it is a zombie).
func ProcEnv(pid int, name string) (value string, found bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return "", false, err
	}
	if len(b) == 0 {
		return "", false, ErrNoEnviron
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(name+"=")); ok {
			return string(v), true, nil
		}
	}
	return "", false, nil
}

// Pids reads a list of pids separated by white space, as /proc/<pid>/task/<tid>/children
// and cgroup.procs hold; a file that cannot be read is an empty list.
func Pids(path string) []int {
	b, _ := os.ReadFile(path)
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}
