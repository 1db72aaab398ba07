package runtime

import (
	"bytes"
	"errors"
	"os"
	"strconv"
)

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
