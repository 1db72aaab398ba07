package containerd

import (
	"bytes"
	"context"
	"flag"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/namespaces"

	"github.com/probe-agent/probe-agent/internal/testproc"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
	"github.com/probe-agent/probe-agent/service"
)

func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkExecAgainstBareClient runs an exec probe through the agent's target and
// prober, interleaved with the same exec done by a bare containerd client loop (exec,
// wait, start, wait for exit, delete) on the same container, and reports latency and
// this process's CPU per exec for both, with their ratios.
func BenchmarkExecAgainstBareClient(b *testing.B) {
	d := ctrdtest.Start(b)
	client := d.Client(b)
	rootfs := ctrdtest.Rootfs(b)
	task := ctrdtest.RunContainer(b, client, "bench", "exec", rootfs, nil, "sleep", "3600")
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	c, err := client.LoadContainer(ctx, "exec")
	if err != nil {
		b.Fatal(err)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	tg := &target{client: client, ns: "bench", id: "exec", pid: int(task.Pid()), process: spec.Process,
		fifoDir: b.TempDir(), cleanup: &wg}
	check := service.DefaultCheck(service.Liveness)
	check.Exec = &service.Exec{Command: []string{"true"}}
	check.TimeoutSeconds = service.Seconds(10 * time.Second)

	bare := func() {
		var out bytes.Buffer
		ps := *spec.Process
		ps.Args, ps.Terminal = []string{"true"}, false
		p, err := task.Exec(ctx, execID("probe-"), &ps, cio.NewCreator(cio.WithStreams(nil, &out, &out), cio.WithFIFODir(tg.fifoDir)))
		if err != nil {
			b.Fatal(err)
		}
		st, err := p.Wait(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			b.Fatal(err)
		}
		<-st
		p.IO().Wait()
		if _, err := p.Delete(ctx, containerd.WithProcessKill); err != nil {
			b.Fatal(err)
		}
	}
	agent := func() {
		if r := prober.Run(context.Background(), tg, check, prober.Settings{}); r.Outcome != prober.Success {
			b.Fatalf("exec probe: %v %s", r.Outcome, r.Output)
		}
	}
	agent()
	bare()
	wg.Wait()
	var agentWall, bareWall, agentCPU, bareCPU time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0, c0 := time.Now(), cpuNow()
		agent()
		wg.Wait() // count the asynchronous clean-up too
		t1, c1 := time.Now(), cpuNow()
		bare()
		t2, c2 := time.Now(), cpuNow()
		agentWall += t1.Sub(t0)
		agentCPU += c1 - c0
		bareWall += t2.Sub(t1)
		bareCPU += c2 - c1
	}
	n := float64(b.N)
	b.ReportMetric(float64(agentWall.Microseconds())/n, "agent-µs/exec")
	b.ReportMetric(float64(bareWall.Microseconds())/n, "bare-µs/exec")
	b.ReportMetric(float64(agentWall)/float64(bareWall), "latency-ratio")
	b.ReportMetric(float64(agentCPU.Microseconds())/n, "agent-cpu-µs/exec")
	b.ReportMetric(float64(bareCPU.Microseconds())/n, "bare-cpu-µs/exec")
	b.ReportMetric(float64(agentCPU)/float64(bareCPU), "cpu-ratio")
}

var execWindow = flag.Duration("exec-window", 3*time.Second, "BenchmarkExecNodeCPU: how long each path and the idle baseline are measured per round")

// nodeBusy returns the node's busy CPU time so far, from /proc/stat (every CPU, all
// but idle and iowait).
func nodeBusy(b *testing.B) time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		b.Fatalf("/proc/stat: %q", line)
	}
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %q", line)
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// BenchmarkExecNodeCPU measures what an exec probe costs the whole node (the agent,
// containerd, the shim, runc, the command), through the exec runner and through
// containerd exec, one probe at a time on the same busybox container, in interleaved
// rounds with an idle baseline each: node CPU per probe is the busy time over the
// window less the idle rate's share, divided by the probes run. It reports both, with
// latency percentiles and the runner's memory (resident, and of that anonymous: the
// rest is the shell binary's pages, shared with the container's other processes).
//
//	go test -run '^$' -bench ExecNodeCPU -benchtime 3x ./runtime/containerd -args -exec-window 5s
func BenchmarkExecNodeCPU(b *testing.B) {
	d := ctrdtest.Start(b)
	client := d.Client(b)
	task := ctrdtest.RunContainer(b, client, "default", "node", ctrdtest.Rootfs(b), nil, "sleep", "3600")
	var paths pathCounts
	plain := execTarget(b, client, "default", "node", task, false, &paths)
	runner := execTarget(b, client, "default", "node", task, true, &paths)
	onRunner(b, runner, &paths, "true")
	runnerPID := idleRunnerPIDs(runner)[0]
	type result struct {
		busy, idle time.Duration
		n          int
		lat        []time.Duration
	}
	res := map[string]*result{"runner": {}, "exec": {}}
	var idleRate time.Duration // busy CPU per second with no probe running, from the round's idle window
	measure := func(name string, tg *target) {
		r := res[name]
		t0, c0 := time.Now(), nodeBusy(b)
		for time.Since(t0) < *execWindow {
			s := time.Now()
			var out outBuf
			if code, err := tg.Exec(context.Background(), []string{"true"}, &out); err != nil || code != 0 {
				b.Fatalf("%s: %d %v %s", name, code, err, out.String())
			}
			r.lat = append(r.lat, time.Since(s))
			r.n++
		}
		r.busy += nodeBusy(b) - c0
		plain.cleanup.Wait() // deleting the execs is part of their cost
		wall := time.Since(t0)
		r.idle += time.Duration(float64(idleRate) * wall.Seconds())
	}
	for b.Loop() {
		t0, c0 := time.Now(), nodeBusy(b)
		time.Sleep(*execWindow)
		idleRate = time.Duration(float64(nodeBusy(b)-c0) / time.Since(t0).Seconds())
		measure("exec", plain)
		measure("runner", runner)
	}
	if paths.runner.Load() < int64(res["runner"].n) {
		b.Fatalf("%d of %d runner probes went through containerd exec", int64(res["runner"].n)-paths.runner.Load(), res["runner"].n)
	}
	for _, name := range []string{"exec", "runner"} {
		r := res[name]
		slices.Sort(r.lat)
		cpu := float64(max(r.busy-r.idle, 0).Microseconds()) / float64(r.n)
		b.ReportMetric(cpu, name+"-node-cpu-µs/probe")
		b.ReportMetric(float64(r.lat[len(r.lat)/2].Microseconds()), name+"-p50-µs")
		b.ReportMetric(float64(r.lat[len(r.lat)*99/100].Microseconds()), name+"-p99-µs")
		b.ReportMetric(float64(r.n), name+"-probes")
	}
	if kb, ok := statusKiB(runnerPID, "VmRSS"); ok {
		b.ReportMetric(float64(kb), "runner-rss-KiB")
	}
	if kb, ok := statusKiB(runnerPID, "RssAnon"); ok {
		b.ReportMetric(float64(kb), "runner-anon-KiB")
	}
}

// statusKiB reads a size in kB from a process's /proc status.
func statusKiB(pid int, field string) (int, bool) {
	v, ok := statusField(pid, field)
	n, err := strconv.Atoi(strings.TrimSuffix(v, " kB"))
	return n, ok && err == nil
}

// BenchmarkLeftoverSweep measures the sweep after each runner probe where the
// container's init has 64 children that were there before the probe (a supervisor and
// its workers): the sweep as run, which reads only the environments of children that
// are new since the request, against reading every child's (the baseline), and against
// an init with no children.
func BenchmarkLeftoverSweep(b *testing.B) {
	perSweep := func(sweep func()) float64 {
		t0 := time.Now()
		for range b.N {
			sweep()
		}
		return float64(time.Since(t0).Nanoseconds()) / float64(b.N) / 1e3
	}
	empty, _ := reaperShell(b)
	busy, spawn := reaperShell(b)
	spawn(64, "PROBE_TEST=1", testproc.UniqueSleep())
	emptyCost := perSweep(func() { (&runners{reaper: empty}).sweeper()("none") })
	sweep := perSweep(func() { (&runners{reaper: busy}).sweeper()("none") })
	every := perSweep(func() { killLeftovers(busy, "none", nil) })
	b.ReportMetric(emptyCost, "no-children-µs/sweep")
	b.ReportMetric(sweep, "µs/sweep")
	b.ReportMetric(every, "every-child-µs/sweep")
	b.ReportMetric(sweep/every, "ratio")
}
