package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testproc"
)

// outBuf is a probe's output buffer, as the prober gives one: safe for concurrent
// writers, emptied by Reset, and keeping the first limit bytes when limit is set.
type outBuf struct {
	mu    sync.Mutex
	b     bytes.Buffer
	limit int
}

func (o *outBuf) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.limit > 0 {
		o.b.Write(p[:min(len(p), max(o.limit-o.b.Len(), 0))])
		return len(p), nil
	}
	return o.b.Write(p)
}

func (o *outBuf) Reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Reset()
}

func (o *outBuf) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// shells are the POSIX shells images bring as /bin/sh that this machine has.
func shells(t *testing.T) map[string][]string {
	out := map[string][]string{}
	if p, err := exec.LookPath("dash"); err == nil {
		out["dash"] = []string{p}
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := exec.LookPath(p); err == nil {
			out["busybox"] = []string{p, "sh"}
			break
		}
	}
	if p, err := exec.LookPath("bash"); err == nil {
		out["bash"] = []string{p, "--posix"}
	}
	// Debian's /bin/sh and the images' busybox are what runners meet most: with CI set
	// a missing one fails, as a missing containerd does.
	if os.Getenv("CI") != "" && (out["dash"] == nil || out["busybox"] == nil) {
		t.Fatalf("the runner tests need dash and busybox (apt-get install dash busybox-static); found %v", out)
	}
	if len(out) == 0 {
		t.Skip("no shell")
	}
	return out
}

// scriptRunner runs the runner's script in a host shell with pipes, as containerd
// does in a container, for the protocol tests, which need no container.
func scriptRunner(t *testing.T, shell []string) *runner {
	t.Helper()
	r := &runner{hello: nonce(), ready: make(chan struct{}), exited: make(chan struct{}), born: time.Now()}
	cmd := exec.Command(shell[0], append(shell[1:], "-c", runnerScript, runnerName, r.hello)...)
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.stdin = w
	cmd.Stdout, cmd.Stderr = r, stderrWriter{r}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.hostPID = cmd.Process.Pid
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		r.ended()
		close(done)
	}()
	t.Cleanup(func() {
		r.close()
		<-done
	})
	if err := r.waitReady(); err != nil {
		t.Fatal(err)
	}
	return r
}

func noLeftovers(string) {}

// Every argument reaches the command as it was given: spaces, empty strings, newlines,
// quotes, globs, dollar signs and backslashes are never interpreted.
func TestRunnerPassesArgumentsIntact(t *testing.T) {
	args := []string{"a b", "", "  lead", "trail  ", "x\ny", "\n", "\n\nz\n", `back\slash\n`, "$HOME", "*", "-n",
		`'q"`, "tab\there", "ünï", "$(touch /tmp/x)", "`id`", ";exit 9", "a\r\nb"}
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			r := scriptRunner(t, sh)
			var out outBuf
			code, err := r.run(t.Context(), append([]string{"printf", "<%s>"}, args...), &out, noLeftovers)
			if err != nil || code != 0 {
				t.Fatalf("code %d, err %v, output %q", code, err, out.String())
			}
			var want strings.Builder
			for _, a := range args {
				want.WriteString("<" + a + ">")
			}
			if out.String() != want.String() {
				t.Fatalf("output\n%q\nwant\n%q", out.String(), want.String())
			}
		})
	}
}

// Exit statuses come through as wait reports them; a command that cannot be executed
// is reported with runc's words, so that the output does not depend on the path.
func TestRunnerExitStatus(t *testing.T) {
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			r := scriptRunner(t, sh)
			for _, c := range []struct {
				argv []string
				code int
				out  string
			}{
				{[]string{"true"}, 0, ""},
				{[]string{"sh", "-c", "echo out; echo err >&2; exit 3"}, 3, "out\nerr\n"},
				{[]string{"no-such-command"}, 127, `exec: "no-such-command": executable file not found in $PATH`},
				{[]string{"/no/such/binary"}, 127, `exec: "/no/such/binary": stat /no/such/binary: no such file or directory`},
				{[]string{"/dev/null"}, 126, `exec: "/dev/null": permission denied`},
				{[]string{"sh", "-c", "exit 127"}, 127, ""},
			} {
				var out outBuf
				code, err := r.run(t.Context(), c.argv, &out, noLeftovers)
				if err != nil || code != c.code || !strings.Contains(out.String(), c.out) || (c.out == "" && out.String() != "") {
					t.Errorf("%q: code %d, err %v, output %q; want %d and %q", c.argv, code, err, out.String(), c.code, c.out)
				}
			}
		})
	}
}

// A command past its deadline is killed with everything it started, its own session
// included; the runner survives and serves the next request, and nothing the killed
// command printed reaches the next one.
func TestRunnerTimeoutKillsTheCommandTree(t *testing.T) {
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			r := scriptRunner(t, sh)
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			var out outBuf
			script := `trap "" TERM; setsid sh -c 'trap "" TERM; while :; do echo tick; sleep 0.05; done' & sleep 0.1; echo $!; sleep 30`
			start := time.Now()
			_, err := r.run(ctx, []string{"sh", "-c", script}, &out, noLeftovers)
			if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
				t.Fatalf("err %v after %v, want the deadline", err, time.Since(start))
			}
			var next outBuf
			if code, err := r.run(t.Context(), []string{"echo", "next"}, &next, noLeftovers); err != nil || code != 0 || next.String() != "next\n" {
				t.Fatalf("next request: code %d, err %v, output %q", code, err, next.String())
			}
			pid := 0
			for _, f := range strings.Fields(out.String()) {
				if n, err := strconv.Atoi(f); err == nil {
					pid = n
				}
			}
			if pid == 0 {
				t.Fatalf("no pid in %q", out.String())
			}
			await.Until(t, 5*time.Second, "the setsid child killed", func() bool { return syscall.Kill(pid, 0) != nil })
		})
	}
}

// A background child that keeps the output open does not hold the result back, and
// what it prints after the result belongs to no request.
func TestRunnerBackgroundChildDoesNotBlock(t *testing.T) {
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			r := scriptRunner(t, sh)
			start := time.Now()
			var out outBuf
			code, err := r.run(t.Context(), []string{"sh", "-c", "(sleep 0.3; echo late) & echo early; exit 1"}, &out, noLeftovers)
			if err != nil || code != 1 || time.Since(start) > 250*time.Millisecond {
				t.Fatalf("code %d, err %v after %v; want 1 at once", code, err, time.Since(start))
			}
			await.Until(t, 5*time.Second, "the late line", func() bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				return r.dropped >= len("late\n")
			})
			var next outBuf
			if code, err := r.run(t.Context(), []string{"echo", "next"}, &next, noLeftovers); err != nil || code != 0 || next.String() != "next\n" {
				t.Fatalf("next request: code %d, err %v, output %q", code, err, next.String())
			}
			if out.String() != "early\n" {
				t.Fatalf("output %q", out.String())
			}
		})
	}
}

// FuzzRunnerOutput feeds the stdout parser a frame around arbitrary command output,
// with output belonging to no request before and after it, cut into writes at
// arbitrary places: the request gets exactly its output and its exit status, whatever
// the bytes (0x1f and newlines included), and the parser holds no more than a marker.
func FuzzRunnerOutput(f *testing.F) {
	f.Fuzz(func(t *testing.T, output, before, after []byte, cuts []byte, code uint8) {
		r := &runner{hello: nonce(), ready: make(chan struct{}), exited: make(chan struct{})}
		var out outBuf
		c := newRequest(nonce(), &out)
		r.cur = c
		var stream []byte
		stream = append(stream, before...)
		stream = fmt.Appendf(stream, "\x1f%s start\n", c.nonce)
		half := len(output) / 2
		stream = append(stream, output[:half]...)
		stream = fmt.Appendf(stream, "\x1f%s pid 42\n", c.nonce)
		stream = append(stream, output[half:]...)
		stream = fmt.Appendf(stream, "\x1f%s exit %d\n", c.nonce, code)
		stream = append(stream, after...)
		for len(stream) > 0 {
			n := len(stream)
			if len(cuts) > 0 {
				n = min(n, int(cuts[0])+1)
				cuts = cuts[1:]
			}
			if w, err := r.Write(stream[:n]); w != n || err != nil {
				t.Fatalf("write %d: %d %v", n, w, err)
			}
			stream = stream[n:]
			if len(r.pending) >= maxMarker {
				t.Fatalf("%d bytes pending", len(r.pending))
			}
		}
		select {
		case <-c.done:
		default:
			t.Fatal("the request did not end")
		}
		if c.err != nil || c.code != int(code) || c.pid != 42 {
			t.Fatalf("err %v, code %d, pid %d", c.err, c.code, c.pid)
		}
		if out.String() != string(output) {
			t.Fatalf("output %q, want %q", out.String(), output)
		}
	})
}

// A runner that does not start the command (a container process stopped it) is given
// up after half the probe's time, so that containerd exec still has the other half.
func TestRunnerStuckIsGivenUp(t *testing.T) {
	for name, sh := range shells(t) {
		t.Run(name, func(t *testing.T) {
			r := scriptRunner(t, sh)
			if err := syscall.Kill(r.hostPID, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			start := time.Now()
			_, err := r.run(ctx, []string{"true"}, &outBuf{}, noLeftovers)
			if !errors.Is(err, errRunner) || time.Since(start) > 700*time.Millisecond {
				t.Fatalf("err %v after %v; want the runner given up within half the timeout", err, time.Since(start))
			}
			<-r.exited
		})
	}
}

// What the runtime remembers of a container's runner notes goes with the container, so
// that a node's churn of pods does not grow it.
func TestRunnerNotesGoWithTheContainer(t *testing.T) {
	r, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &entry{ns: "k8s.io", id: "abc"}
	r.entries["ns/pod/app"] = e
	r.noteRunner("ns/pod/app", "no shell in the container")
	r.mu.Lock()
	r.remove("ns/pod/app", e)
	left := len(r.runnerNotes)
	r.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d notes left after the container went", left)
	}
}

// reaperShell starts a shell that stands for a container's init: it starts sleeps with
// the given environment, one batch per line it reads, and reaps them.
func reaperShell(t testing.TB) (pid int, spawn func(n int, env, arg string)) {
	t.Helper()
	cmd := exec.Command("sh", "-c", `while read -r n env arg; do i=0; while [ "$i" -lt "$n" ]; do env "$env" sleep "$arg" & i=$((i+1)); done; done; wait`)
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range orphans(cmd.Process.Pid) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
		w.Close()
		_ = cmd.Wait()
	})
	total := 0
	return cmd.Process.Pid, func(n int, env, arg string) {
		total += n
		fmt.Fprintf(w, "%d %s %s\n", n, env, arg)
		await.Until(t, 10*time.Second, "the sleeps running", func() bool {
			return len(testproc.Find("sleep", arg)) == n && len(orphans(cmd.Process.Pid)) == total
		})
	}
}

// Only what joined the reaper's children after the request was sent is swept: a child
// that was there before is not the command's, even if it carried the nonce, and its
// environment is never read.
func TestLeftoversAreOnlyNewOrphans(t *testing.T) {
	pid, spawn := reaperShell(t)
	old, fresh := testproc.UniqueSleep(), testproc.UniqueSleep()
	spawn(1, execMarkerEnv+"=n1", old)
	sweep := (&runners{reaper: pid}).sweeper()
	spawn(2, execMarkerEnv+"=n1", fresh)
	sweep("n1")
	await.Until(t, 5*time.Second, "the new orphans killed", func() bool { return len(testproc.Find("sleep", fresh)) == 0 })
	if left := testproc.Find("sleep", old); len(left) != 1 {
		t.Fatalf("the child that was there before: %v, want it left running", left)
	}
}
