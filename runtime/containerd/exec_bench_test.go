package containerd

import (
	"bytes"
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/namespaces"

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
		p, err := task.Exec(ctx, execID(), &ps, cio.NewCreator(cio.WithStreams(nil, &out, &out), cio.WithFIFODir(tg.fifoDir)))
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
