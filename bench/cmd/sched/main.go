// Command sched runs one scheduler design with no-op (or busy) probe bodies in its own
// process and prints one JSON object: fires, CPU (getrusage), VmRSS before and after
// the probes were created, and lateness: how long after its due time each probe's body
// started. It imports nothing but the agent's scheduler, so that its memory is the
// scheduler's.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/probe-agent/probe-agent/bench/internal/measure"
	"github.com/probe-agent/probe-agent/prober/pool"
	"github.com/probe-agent/probe-agent/prober/wheel"
)

var (
	impl   = flag.String("impl", "wheel", "wheel, afterfunc or ticker")
	n      = flag.Int("n", 1000, "probes")
	period = flag.Duration("period", 10*time.Second, "probe period")
	warmup = flag.Duration("warmup", 3*time.Second, "time before measuring")
	window = flag.Duration("window", 10*time.Second, "measuring window")
	busy   = flag.Duration("busy", 0, "CPU each probe body burns, to load the workers")
	// Slow probes hold their worker without using CPU, as a probe waiting on a hung
	// target does; their own lateness is not counted.
	slowEvery = flag.Int("slow-every", 0, "make every n-th probe slow (0: none)")
	slow      = flag.Duration("slow", 2*time.Second, "how long a slow probe holds its worker")
	workers   = flag.Int("workers", 64, "worker pool size (wheel)")
	prof      = flag.String("cpuprofile", "", "write a CPU profile of the window here")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	runtime.GC()
	debug.FreeOSMemory()
	base := measure.RSS()
	var fires, early atomic.Int64
	var h measure.Hist
	late := func(due time.Time) {
		d := time.Since(due)
		if d < 0 {
			early.Add(1)
		}
		h.Add(d)
	}
	start := time.Now().Add(100 * time.Millisecond)
	phase := func() time.Time { return start.Add(time.Duration(rand.Int64N(int64(*period)))) }
	isSlow := func(i int) bool { return *slowEvery > 0 && i%*slowEvery == 0 }
	// body is one probe: counted, then its work.
	body := func(slowProbe bool) {
		fires.Add(1)
		if *busy > 0 {
			measure.Spin(*busy)
		}
		if slowProbe {
			time.Sleep(*slow)
		}
	}
	switch *impl {
	case "wheel":
		// The agent's design: one timer wheel, one driver goroutine, a bounded pool of
		// workers woken on demand; periodic re-arms share wake-ups within their slack.
		type probe struct {
			t    wheel.Timer
			due  time.Time
			slow bool
		}
		var d *wheel.Driver
		slack := wheel.Slack(*period)
		p := pool.New(*workers, func(_ context.Context, pr *probe) {
			if !pr.slow {
				late(pr.due) // due to start, as the agent measures it
			}
			body(pr.slow)
			d.AddSlack(&pr.t, pr.due.Add(*period), slack)
		})
		d = wheel.NewDriver(clockwork.NewRealClock(), time.Millisecond, func(t *wheel.Timer, due time.Time) {
			pr := t.Value.(*probe)
			pr.due = due
			p.Push(pr)
		})
		probes := make([]probe, *n)
		for i := range probes {
			probes[i].t.Value, probes[i].slow = &probes[i], isSlow(i)
			d.AddSlack(&probes[i].t, phase(), slack) // as the agent spreads adopted probes
		}
		go d.Run(context.Background())
		go p.Run(context.Background())
	case "afterfunc":
		type probe struct {
			next time.Time
			t    *time.Timer
		}
		for i := range *n {
			pr := &probe{next: phase()}
			slowProbe := isSlow(i)
			// Created far off, then set: the callback may not run before pr.t is set.
			pr.t = time.AfterFunc(time.Hour, func() {
				if !slowProbe {
					late(pr.next)
				}
				body(slowProbe)
				pr.next = pr.next.Add(*period)
				pr.t.Reset(time.Until(pr.next))
			})
			pr.t.Reset(time.Until(pr.next))
		}
	case "ticker":
		// The kubelet's pattern: a goroutine and a ticker per probe.
		for i := range *n {
			first := phase()
			slowProbe := isSlow(i)
			go func() {
				time.Sleep(time.Until(first))
				tk := time.NewTicker(*period)
				for next := first; ; next = next.Add(*period) {
					if !slowProbe {
						late(next)
					}
					body(slowProbe)
					<-tk.C
				}
			}()
		}
	default:
		log.Fatalf("unknown impl %q", *impl)
	}
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			log.Fatal(err)
		}
		_ = pprof.StartCPUProfile(f)
	}
	r := measure.Window(*warmup, *window, &fires, &early, &h) // errors: fires before their time
	pprof.StopCPUProfile()
	r.BaseRSS = base
	r.RSSBytes = measure.RSS()
	r.Goroutines = runtime.NumGoroutine()
	_ = json.NewEncoder(os.Stdout).Encode(r)
}
