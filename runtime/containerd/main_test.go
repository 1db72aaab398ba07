package containerd

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a test starts (exec runners' waiters, output copies, deletions) must
// be gone when it ends.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
