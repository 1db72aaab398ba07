package containerd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/typeurl/v2"
)

// The exec runner: one long-lived shell per container instance, started through
// containerd exec with the container's own process spec, that forks each exec probe's
// command. A command it forks inherits everything runc set up for the shell (namespaces,
// cgroup, user and groups, capabilities, no_new_privs, seccomp, AppArmor, rlimits,
// environment, working directory), exactly as if containerd had exec'd it, for a small
// fraction of the node's CPU: runc runs once per instance instead of once per probe.
//
// Protocol. A request on the runner's stdin is a line "<nonce> <argc>", then for each
// argument a line with its number of lines and those lines, so that every argument
// reaches the command intact (newlines included; nothing is ever evaluated). The runner
// answers on stdout with marker lines that begin with the byte 0x1f and the request's
// nonce, in between which the command's output (stdout and stderr) flows unchanged:
//
//	\x1f<nonce> start        the command is about to be forked
//	\x1f<nonce> pid <pid>    its pid, in the container's PID namespace
//	\x1f<nonce> exit <code>  its exit status, as wait reports it
//
// Output before "start" or after "exit" (a background child writing late) belongs to
// no request and is dropped; the nonce is random per request, so a command cannot end
// its own frame early. A command that cannot be executed (missing, not executable)
// makes the forked subshell print an error that starts with the shell's $0, runnerName,
// and exit 127 or 126: the agent words that as runc would. Each command runs with
// PROBE_AGENT_EXEC=<nonce> in its environment, which is how the agent finds what it
// left behind. The script's first line is a no-op that names it in the container's ps.
const runnerScript = `: probe-agent exec runner: forks exec probes
printf '\037%s ready %s\n' "$1" "$$"
while read -r n c; do
	set --
	while [ "$c" -gt 0 ]; do
		read -r k || exit 0
		a= i=0
		while [ "$i" -lt "$k" ]; do
			IFS= read -r l || exit 0
			if [ "$i" = 0 ]; then a=$l; else a="$a
$l"; fi
			i=$((i+1))
		done
		set -- "$@" "$a"
		c=$((c-1))
	done
	printf '\037%s start\n' "$n"
	(export PROBE_AGENT_EXEC="$n"; exec "$@") </dev/null 2>&1 &
	printf '\037%s pid %s\n' "$n" "$!"
	wait "$!"
	printf '\037%s exit %s\n' "$n" "$?"
done
`

const (
	// runnerName is the shell's $0, what ps shows after "sh -c <script>".
	runnerName = "probe-agent-exec-runner"
	// runnerExecPrefix starts the exec IDs of runners.
	runnerExecPrefix = "probe-runner-"
	// runnerShell is the container's own POSIX shell.
	runnerShell = "/bin/sh"
	// maxMarker bounds a marker line; a longer "line" after 0x1f is output.
	maxMarker = 80
	// runnerStart bounds how long a new runner may take to say it is ready.
	runnerStart = 10 * time.Second
	// runnerStderr bounds what is kept of the runner's own stderr (for the log).
	runnerStderr = 512
	// pidWait bounds the wait for a command's pid (it comes within a millisecond).
	pidWait = time.Second
)

// errRunner means the runner could not serve a request: the probe goes through
// containerd exec instead. It is never a probe's result.
var errRunner = errors.New("exec runner unavailable")

// runnerError says why a runner failed; permanent ones disable the runner for the
// container instance (no shell, processes out of sight).
type runnerError struct {
	msg       string
	permanent bool
}

func (e *runnerError) Error() string        { return e.msg }
func (e *runnerError) Is(target error) bool { return target == errRunner }

// request is one command in flight on a runner.
type request struct {
	nonce   string
	out     io.Writer
	started bool
	head    []byte        // the first bytes of the output, to tell the shell's own errors
	pid     int           // in the container's namespace; 0 until reported
	pidC    chan struct{} // closed when the pid is reported
	code    int
	err     error         // a protocol error
	done    chan struct{} // closed on "exit" or a protocol error
}

func newRequest(nonce string, out io.Writer) *request {
	return &request{nonce: nonce, out: out, done: make(chan struct{}), pidC: make(chan struct{})}
}

// runner is one shell started in a container instance.
type runner struct {
	stdin   io.WriteCloser
	hostPID int // the shell's pid in the agent's (the host's) PID namespace
	born    time.Time
	// killExec kills the shell through containerd, for when the agent may not signal
	// the container's processes itself (no CAP_KILL for another user's process).
	killExec func()
	// closeIO closes the shell's stdin at the shim, which holds a writer of the FIFO
	// itself: closing the agent's end alone never reaches the shell.
	closeIO func()

	mu      sync.Mutex
	hello   string
	nsPID   int           // the shell's own pid, from its "ready" line
	ready   chan struct{} // closed on "ready"
	cur     *request
	pending []byte // the start of a marker line, split across writes
	stderr  []byte
	dropped int           // output that belonged to no request
	exited  chan struct{} // closed when the shell has exited
	dead    bool
}

func nonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// encodeRequest writes a request for argv.
func encodeRequest(nonce string, argv []string) []byte {
	var b bytes.Buffer
	b.WriteString(nonce + " " + strconv.Itoa(len(argv)) + "\n")
	for _, a := range argv {
		lines := strings.Split(a, "\n")
		b.WriteString(strconv.Itoa(len(lines)) + "\n")
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

// Write takes the shell's stdout: marker lines drive the current request, the rest is
// its command's output. It never fails, so that containerd's copy keeps draining the
// pipe whatever the command prints; memory stays bounded by maxMarker.
func (r *runner) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	if len(r.pending) > 0 {
		p = append(r.pending, p...)
		r.pending = nil
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, 0x1f)
		if i < 0 {
			r.emit(p)
			break
		}
		r.emit(p[:i])
		p = p[i:]
		j := bytes.IndexByte(p[:min(len(p), maxMarker)], '\n')
		if j < 0 {
			if len(p) < maxMarker {
				r.pending = append([]byte(nil), p...)
				break
			}
			r.emit(p[:1])
			p = p[1:]
			continue
		}
		if !r.marker(string(p[1:j])) {
			r.emit(p[:1])
			p = p[1:]
			continue
		}
		p = p[j+1:]
	}
	return n, nil
}

// emit passes output to the current request, if it has started and not ended.
func (r *runner) emit(b []byte) {
	if c := r.cur; c != nil && c.started {
		if len(c.head) < len(runnerName)+2 {
			c.head = append(c.head, b[:min(len(b), len(runnerName)+2-len(c.head))]...)
		}
		_, _ = c.out.Write(b)
	} else {
		r.dropped += len(b)
	}
}

// marker applies one marker line; false means it is no marker of ours (output).
func (r *runner) marker(line string) bool {
	nonce, rest, _ := strings.Cut(line, " ")
	word, arg, _ := strings.Cut(rest, " ")
	if nonce == r.hello && word == "ready" && r.nsPID == 0 {
		if pid, err := strconv.Atoi(arg); err == nil && pid > 0 {
			r.nsPID = pid
			close(r.ready)
			return true
		}
		return false
	}
	c := r.cur
	if c == nil || nonce != c.nonce {
		return false
	}
	num, err := strconv.Atoi(arg)
	switch {
	case word == "start" && arg == "":
		c.started = true
	case word == "pid" && err == nil && num > 0 && c.pid == 0:
		c.pid = num
		close(c.pidC)
	case word == "exit" && err == nil:
		c.code = num
		r.finish(nil)
	default:
		r.finish(fmt.Errorf("exec runner: bad line %q", line))
	}
	return true
}

// shellError says whether the output is the runner shell's own error: the command was
// not executed.
func (c *request) shellError() bool { return string(c.head) == runnerName+": " }

// finish ends the current request; with r.mu held.
func (r *runner) finish(err error) {
	if c := r.cur; c != nil {
		c.err = err
		r.cur = nil
		close(c.done)
	}
}

// stderrWriter keeps the start of the shell's own error output.
type stderrWriter struct{ r *runner }

func (w stderrWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	if room := runnerStderr - len(w.r.stderr); room > 0 {
		w.r.stderr = append(w.r.stderr, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// startRunner starts a shell in the target's container and waits for its ready line.
func (t *target) startRunner(ctx context.Context) (*runner, error) {
	nctx := namespaces.WithNamespace(context.WithoutCancel(ctx), t.ns)
	task, err := t.loadTask(nctx)
	if err != nil {
		return nil, t.wrap(err)
	}
	r := &runner{hello: nonce(), ready: make(chan struct{}), exited: make(chan struct{}), born: time.Now()}
	ps := *t.process
	ps.Args, ps.Terminal = []string{runnerShell, "-c", runnerScript, runnerName, r.hello}, false
	stdin, w := io.Pipe()
	r.stdin = w
	proc, err := task.Exec(nctx, execID(runnerExecPrefix), &ps,
		cio.NewCreator(cio.WithStreams(stdin, r, stderrWriter{r}), cio.WithFIFODir(t.fifoDir)))
	if err != nil {
		w.Close()
		return nil, t.wrap(err)
	}
	statusC, err := proc.Wait(nctx)
	if err != nil {
		w.Close()
		t.deleteLater(proc)
		return nil, t.wrap(err)
	}
	if err := proc.Start(nctx); err != nil {
		w.Close()
		t.deleteLater(proc)
		if _, ok := commandFailure(err); ok {
			return nil, &runnerError{msg: "no shell in the container: " + err.Error(), permanent: true}
		}
		return nil, t.wrap(err)
	}
	r.hostPID = int(proc.Pid())
	r.killExec = func() {
		kctx, cancel := t.callCtx(killWait)
		defer cancel()
		_ = proc.Kill(kctx, syscall.SIGKILL)
	}
	r.closeIO = func() {
		cctx, cancel := t.callCtx(killWait)
		defer cancel()
		_ = proc.CloseIO(cctx, containerd.WithStdinCloser)
	}
	go func() {
		// Not counted in t.cleanup (it lives as long as the shell): it deletes the
		// exec itself, and ends at the latest when the runtime's client closes.
		<-statusC
		r.ended()
		t.delete(proc)
	}()
	if err := r.waitReady(); err != nil {
		return nil, err
	}
	if ns, ok := lastNSpid(r.hostPID); !ok || ns != r.nsPID {
		r.close()
		return nil, &runnerError{msg: "the agent cannot see the container's processes (it needs the host's PID namespace)", permanent: true}
	}
	return r, nil
}

// ended records that the shell exited: a request in flight fails with errRunner.
func (r *runner) ended() {
	r.mu.Lock()
	r.dead = true
	r.finish(errRunner)
	r.mu.Unlock()
	close(r.exited)
	r.stdin.Close()
}

// waitReady waits for the shell's ready line.
func (r *runner) waitReady() error {
	timer := time.NewTimer(runnerStart)
	defer timer.Stop()
	select {
	case <-r.ready:
		return nil
	case <-r.exited:
		return &runnerError{msg: "exec runner exited at start: " + strings.TrimSpace(r.stderrText())}
	case <-timer.C:
		r.kill()
		return &runnerError{msg: "exec runner did not start within " + runnerStart.String()}
	}
}

func (r *runner) stderrText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.stderr)
}

// close ends the shell: its stdin closes and it leaves its loop.
func (r *runner) close() {
	r.stdin.Close()
	select {
	case <-r.exited:
	default:
		if r.closeIO != nil {
			r.closeIO()
		}
	}
}

// kill ends the shell at once.
func (r *runner) kill() {
	r.mu.Lock()
	r.dead = true
	r.mu.Unlock()
	if err := syscall.Kill(r.hostPID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) && r.killExec != nil {
		r.killExec()
	}
	r.stdin.Close()
}

// run runs argv on the runner. An error that is errRunner means the runner could not
// serve it (it died, or spoke out of turn) and the caller runs the probe another way;
// the runner is then dead or killed. leftovers, called after the command ended, kills
// what it left behind.
func (r *runner) run(ctx context.Context, argv []string, out io.Writer, leftovers func(nonce string)) (int, error) {
	c := newRequest(nonce(), out)
	r.mu.Lock()
	if r.dead {
		r.mu.Unlock()
		return -1, &runnerError{msg: "exec runner exited"}
	}
	r.cur = c
	r.mu.Unlock()
	if _, err := r.stdin.Write(encodeRequest(c.nonce, argv)); err != nil {
		r.abandon(c)
		return -1, &runnerError{msg: "exec runner: writing a request: " + err.Error()}
	}
	if err := r.started(ctx, c); err != nil {
		return -1, err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		r.timeout(c)
		leftovers(c.nonce)
		return -1, ctx.Err()
	}
	leftovers(c.nonce)
	switch {
	case c.err == errRunner:
		return -1, &runnerError{msg: "exec runner exited: " + strings.TrimSpace(r.stderrText())}
	case c.err != nil:
		r.kill()
		return -1, &runnerError{msg: c.err.Error()}
	case (c.code == 126 || c.code == 127) && c.shellError():
		resetOutput(out)
		fmt.Fprint(out, execFailure(argv[0], c.code))
	}
	return c.code, nil
}

// abandon detaches a request whose result will not be read, and kills the runner: its
// state is unknown.
func (r *runner) abandon(c *request) {
	r.mu.Lock()
	if r.cur == c {
		r.cur = nil
	}
	r.mu.Unlock()
	r.kill()
}

// started waits for the shell to report the command's pid, which it does within a
// millisecond of the request. A shell that does not (stopped by a container process,
// stuck) is killed, while half the probe's time is left for containerd exec.
func (r *runner) started(ctx context.Context, c *request) error {
	wait := halfLeft(ctx, pidWait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-c.pidC:
		return nil
	case <-c.done:
		return nil
	case <-timer.C:
		r.abandon(c)
		return &runnerError{msg: "exec runner did not start a command within " + wait.String()}
	case <-ctx.Done():
		r.abandon(c)
		return ctx.Err()
	}
}

// timeout kills the command of a request that ran out of time, with everything it
// started, and waits for the shell to report it; a shell that does not, or a command
// the agent may not signal, costs the shell: it is killed.
func (r *runner) timeout(c *request) {
	r.mu.Lock()
	pid := c.pid
	r.mu.Unlock()
	if host, ok := childByNSpid(r.hostPID, pid); ok && !killTree(host) {
		r.abandon(c)
		return
	}
	timer := time.NewTimer(killWait)
	defer timer.Stop()
	select {
	case <-c.done:
		if c.err == nil {
			return
		}
	case <-timer.C:
	}
	r.abandon(c)
}

// halfLeft is half the time ctx has left, at most limit: what the runner may take
// while containerd exec would still have the other half.
func halfLeft(ctx context.Context, limit time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return min(limit, time.Until(dl)/2)
	}
	return limit
}

// resetOutput empties the probe's output buffer when it can be emptied.
func resetOutput(out io.Writer) {
	if r, ok := out.(interface{ Reset() }); ok {
		r.Reset()
	}
}

// execFailure words a command that could not be executed as runc does through
// containerd, so that the output is the same whichever path ran the probe.
func execFailure(cmd string, code int) string {
	why := "executable file not found in $PATH"
	switch {
	case code == 126:
		why = "permission denied"
	case strings.Contains(cmd, "/"):
		why = "stat " + cmd + ": no such file or directory"
	}
	return fmt.Sprintf("OCI runtime exec failed: exec failed: unable to start container process: exec: %q: %s: unknown", cmd, why)
}

// Runners per container instance, and the back-off after one dies.
const (
	maxRunners        = 4 // one per exec check running at once, at most
	runnerBackoff     = time.Second
	runnerBackoffMax  = time.Minute
	runnerStableAfter = time.Minute // a runner that lived this long resets the back-off
	startWait         = 2 * time.Second
)

// runners are the exec runners of one container instance. A probe takes an idle one,
// or one it starts, or runs through containerd exec.
type runners struct {
	note    func(reason string) // logs why probes go through containerd exec, once per reason
	cleanup *sync.WaitGroup     // counts asynchronous closing; nil: close synchronously

	mu      sync.Mutex
	idle    []*runner
	live    int           // started or starting
	started chan struct{} // the start in progress (one at a time), closed when it ends; nil when none
	off     string        // why runners are off for the instance, for good; "" while they are not
	retryAt time.Time     // no new runner before this, after one failed
	backoff time.Duration // the wait after the last failure
	closed  bool          // the instance ended or the agent stops
	reaper  int           // host pid of the container's init, where it has a PID namespace of its own
	first   sync.Once     // at the first start: find the reaper, end an earlier agent's runners
}

// get returns an idle runner, or nil: the probe then goes through containerd exec.
// When none is idle and one may be started, it starts one and waits for it at most
// half the probe's time left (startWait at most): a runner starts in about the time of
// one containerd exec, and a slow start must not cost the probe its deadline.
func (s *runners) get(ctx context.Context, t *target) *runner {
	s.mu.Lock()
	if r := s.idleLocked(); r != nil || s.closed || s.off != "" {
		s.mu.Unlock()
		return r
	}
	if s.started == nil && s.live < maxRunners && !time.Now().Before(s.retryAt) {
		s.live++
		s.started = make(chan struct{})
		t.cleanup.Add(1)
		go s.start(t, s.started)
	}
	started := s.started
	s.mu.Unlock()
	if started == nil {
		return nil
	}
	timer := time.NewTimer(halfLeft(ctx, startWait))
	defer timer.Stop()
	select {
	case <-started:
	case <-timer.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idleLocked()
}

func (s *runners) idleLocked() *runner {
	n := len(s.idle)
	if n == 0 {
		return nil
	}
	r := s.idle[n-1]
	s.idle = s.idle[:n-1]
	return r
}

// start starts a runner and closes started when it is idle or has failed.
func (s *runners) start(t *target, started chan struct{}) {
	defer t.cleanup.Done()
	defer close(started)
	s.first.Do(func() {
		if ns, ok := lastNSpid(t.pid); ok && ns == 1 {
			s.mu.Lock()
			s.reaper = t.pid
			s.mu.Unlock()
		}
		t.endStaleRunners()
	})
	r, err := t.startRunner(context.Background())
	s.mu.Lock()
	s.started = nil
	if err != nil {
		s.live--
		s.failedLocked(err)
		s.mu.Unlock()
		return
	}
	s.keep(r)
}

// put gives a runner back after a request; a dead one is counted out, with back-off.
// err is the request's error, which says why when the runner failed it.
func (s *runners) put(r *runner, err error) {
	r.mu.Lock()
	dead := r.dead
	r.mu.Unlock()
	s.mu.Lock()
	if dead {
		s.live--
		if time.Since(r.born) >= runnerStableAfter {
			s.backoff = 0
		}
		if !errors.Is(err, errRunner) {
			err = &runnerError{msg: "exec runner exited: " + strings.TrimSpace(r.stderrText())}
		}
		s.failedLocked(err)
		s.mu.Unlock()
		return
	}
	s.keep(r)
}

// keep makes a live runner idle, or ends it when the runners are closed; called with
// s.mu held, which it releases.
func (s *runners) keep(r *runner) {
	if !s.closed {
		s.idle = append(s.idle, r)
		s.mu.Unlock()
		return
	}
	s.live--
	s.mu.Unlock()
	r.close()
}

// failedLocked records why a runner could not serve: a permanent reason turns runners
// off for the instance, any other backs off; with s.mu held.
func (s *runners) failedLocked(err error) {
	var re *runnerError
	if errors.As(err, &re) && re.permanent {
		s.off = re.msg
	} else {
		s.backoff = min(max(2*s.backoff, runnerBackoff), runnerBackoffMax)
		s.retryAt = time.Now().Add(s.backoff)
	}
	if s.note != nil {
		s.note(err.Error())
	}
}

// sweeper returns what kills the leftovers of a command about to be sent, where
// orphans can be found: after the command, the processes that joined the reaper's
// children since now and carry the command's nonce. Those that were there before are
// not the command's, so their environments are not read: a container's init with many
// children would otherwise cost every probe a read of each.
func (s *runners) sweeper() func(nonce string) {
	s.mu.Lock()
	reaper := s.reaper
	s.mu.Unlock()
	if reaper == 0 {
		return func(string) {}
	}
	before := orphans(reaper)
	slices.Sort(before)
	return func(nonce string) { killLeftovers(reaper, nonce, before) }
}

// close ends the idle runners now and the busy ones when their request ends. Ending a
// runner is a call to containerd: it is made off the caller's goroutine when the
// runners have a WaitGroup to count it in (the runtime's events must not wait on it).
func (s *runners) close() {
	s.mu.Lock()
	s.closed = true
	idle := s.idle
	s.idle = nil
	s.live -= len(idle)
	s.mu.Unlock()
	for _, r := range idle {
		if s.cleanup == nil {
			r.close()
			continue
		}
		s.cleanup.Add(1)
		go func() {
			defer s.cleanup.Done()
			r.close()
		}()
	}
}

// endStaleRunners ends the runners an earlier agent left in the instance: one killed
// before it could close them leaves them waiting on a stdin the shim keeps open.
func (t *target) endStaleRunners() {
	ctx, cancel := t.callCtx(killWait)
	defer cancel()
	task, err := t.loadTask(ctx)
	if err != nil {
		return
	}
	procs, err := task.Pids(ctx)
	if err != nil {
		return
	}
	for _, p := range procs {
		if p.Info == nil {
			continue
		}
		var d runcopts.ProcessDetails
		if err := typeurl.UnmarshalTo(p.Info, &d); err != nil || !strings.HasPrefix(d.ExecID, runnerExecPrefix) {
			continue
		}
		proc, err := task.LoadProcess(ctx, d.ExecID, nil)
		if err != nil {
			continue
		}
		if statusC, err := proc.Wait(ctx); err == nil && proc.Kill(ctx, syscall.SIGKILL) == nil {
			select {
			case <-statusC:
			case <-ctx.Done():
			}
		}
		_, _ = proc.Delete(ctx)
	}
}
