package containerd

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/containerd/errdefs"
)

func TestCommandFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		ok   bool
	}{
		{errors.New(`OCI runtime exec failed: exec failed: unable to start container process: exec: "/no/such": stat /no/such: no such file or directory: unknown`), 127, true},
		{errors.New(`OCI runtime exec failed: exec failed: unable to start container process: exec: "curl": executable file not found in $PATH: unknown`), 127, true},
		{errors.New(`OCI runtime exec failed: exec failed: unable to start container process: exec: "/": permission denied: unknown`), 126, true},
		// containerd lost the task or the exec (it restarted): not the command's fault.
		{fmt.Errorf("process probe-1 not found: %w", errdefs.ErrNotFound), 0, false},
		{fmt.Errorf("exec failed: no such file or directory: %w", errdefs.ErrNotFound), 0, false},
		{fmt.Errorf("connection refused: %w", errdefs.ErrUnavailable), 0, false},
		{errors.New("ttrpc: closed"), 0, false},
	} {
		code, ok := commandFailure(tc.err)
		if code != tc.code || ok != tc.ok {
			t.Errorf("%v: %d %v, want %d %v", tc.err, code, ok, tc.code, tc.ok)
		}
	}
}
