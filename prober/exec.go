package prober

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/probe-agent/probe-agent/service"
)

// Exec runs the check's command in the container; exit code 0 is a success. A command
// that outlives the timeout is killed and counts as a failure. Output (stdout and stderr
// together) is capped at 10 KiB.
func Exec(ctx context.Context, t Target, c *service.Check, _ Settings) Result {
	var out cappedBuffer
	code, err := t.Exec(ctx, c.Exec.Command, &out)
	text := strings.TrimSpace(out.String())
	switch {
	case err == nil && code == 0:
		return Result{Outcome: Success, Output: text}
	case err == nil:
		msg := fmt.Sprintf("exit code %d", code)
		if text != "" {
			msg += ": " + text
		}
		return Result{Outcome: Failure, Output: msg}
	case errors.Is(err, context.DeadlineExceeded):
		msg := fmt.Sprintf("command timed out after %v and was killed", c.TimeoutSeconds.D())
		if text != "" {
			msg += ": " + text
		}
		return Result{Outcome: Failure, Output: msg}
	}
	return Result{Outcome: Unknown, Output: err.Error()}
}
