// Command subject runs one network or exec benchmark subject in its own process, so that
// its CPU time (getrusage) is its own, and prints one JSON object with what it measured;
// with -scenario server it is the loopback target. The bench command starts it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bbconfig "github.com/prometheus/blackbox_exporter/config"
	bbprober "github.com/prometheus/blackbox_exporter/prober"
	"github.com/prometheus/client_golang/prometheus"
	kprobe "k8s.io/kubernetes/pkg/probe"
	khttp "k8s.io/kubernetes/pkg/probe/http"
	ktcp "k8s.io/kubernetes/pkg/probe/tcp"

	"github.com/probe-agent/probe-agent/bench/internal/measure"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime/process"
	"github.com/probe-agent/probe-agent/service"
)

var (
	scenario    = flag.String("scenario", "tcp", "tcp, http, exec or server")
	impl        = flag.String("impl", "ours", "tcp/http: ours, raw, kubelet, blackbox; exec: ours, raw")
	warmup      = flag.Duration("warmup", 3*time.Second, "time before measuring")
	window      = flag.Duration("window", 10*time.Second, "measuring window")
	target      = flag.String("target", "", "host:port to probe (tcp, http)")
	rate        = flag.Int("rate", 0, "probes per second; 0 saturates")
	concurrency = flag.Int("concurrency", 64, "goroutines for loop subjects, workers for ours")
	proto       = flag.String("proto", "tcp", "server: tcp or http")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	var r measure.Result
	switch *scenario {
	case "server":
		serve()
		return
	case "tcp", "http":
		r = network()
	case "exec":
		r = execs()
	default:
		log.Fatalf("unknown scenario %q", *scenario)
	}
	r.RSSBytes = measure.RSS()
	r.Goroutines = runtime.NumGoroutine()
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

// network probes a TCP or HTTP target with one design, saturating or at a fixed rate.
func network() measure.Result {
	host, portStr, err := net.SplitHostPort(*target)
	if err != nil {
		log.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	var ops, errs atomic.Int64
	done := func(ok bool) {
		if ok {
			ops.Add(1)
		} else {
			errs.Add(1)
		}
	}
	isHTTP := *scenario == "http"
	u := &url.URL{Scheme: "http", Host: *target, Path: "/"}

	// loop runs body on c goroutines, as fast as possible or paced to *rate in total.
	loop := func(c int, body func() bool) {
		var tick <-chan time.Time
		if *rate > 0 {
			tk := time.NewTicker(time.Second / time.Duration(*rate))
			tick = tk.C
			work := make(chan struct{}, c)
			for range c {
				go func() {
					for range work {
						done(body())
					}
				}()
			}
			go func() {
				for range tick {
					select {
					case work <- struct{}{}:
					default:
					}
				}
			}()
			return
		}
		for range c {
			go func() {
				for {
					done(body())
				}
			}()
		}
	}
	// probes is how many periodic probes and at what period the scheduled designs run:
	// at a fixed rate one probe per 1/rate second each second; saturating, enough due
	// probes to keep the workers busy.
	nProbes, per := 4000, 40*time.Millisecond
	if *rate > 0 {
		nProbes, per = *rate, time.Second
	}
	switch *impl {
	case "raw":
		if isHTTP {
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
			loop(*concurrency, func() bool {
				resp, err := client.Get(u.String())
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == 200
			})
		} else {
			loop(*concurrency, func() bool {
				c, err := net.Dial("tcp", *target)
				if err != nil {
					return false
				}
				c.Close()
				return true
			})
		}
	case "ours":
		m := prober.NewManager(prober.Options{Workers: *concurrency, Recorder: recorder{done}})
		go m.Run(context.Background())
		c := service.DefaultCheck(service.Readiness)
		c.PeriodSeconds = service.Seconds(per)
		if isHTTP {
			c.HTTPGet = &service.HTTPGet{Host: host, Port: port, Path: "/", Scheme: "HTTP"}
		} else {
			c.TCPSocket = &service.TCPSocket{Host: host, Port: port}
		}
		tg := &process.Target{}
		now := time.Now()
		for i := range nProbes {
			m.Register(prober.Instance{ID: strconv.Itoa(i), Instance: "1", Target: tg,
				StartedAt: now.Add(time.Duration(rand.Int64N(int64(per)))), Checks: [3]*service.Check{service.Readiness: c}})
		}
	case "kubelet":
		// The kubelet's worker pattern with its own probers: a goroutine and ticker
		// per probe.
		tp, hp := ktcp.New(), khttp.New(false)
		for range nProbes {
			go func() {
				time.Sleep(time.Duration(rand.Int64N(int64(per))))
				tk := time.NewTicker(per)
				for range tk.C {
					var res kprobe.Result
					if isHTTP {
						req, err := khttp.NewProbeRequest(u, nil)
						if err != nil {
							done(false)
							continue
						}
						res, _, _ = hp.Probe(req, time.Second)
					} else {
						res, _, _ = tp.Probe(host, port, time.Second)
					}
					done(res == kprobe.Success)
				}
			}()
		}
	case "blackbox":
		// blackbox_exporter's probers as its handler calls them: a fresh registry per probe.
		logger := slog.New(slog.DiscardHandler)
		module := bbconfig.DefaultModule
		module.Timeout = time.Second
		module.TCP.IPProtocol, module.HTTP.IPProtocol = "ip4", "ip4"
		module.HTTP.ValidStatusCodes = []int{200}
		loop(*concurrency, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if isHTTP {
				return bbprober.ProbeHTTP(ctx, u.String(), module, prometheus.NewRegistry(), logger)
			}
			return bbprober.ProbeTCP(ctx, *target, module, prometheus.NewRegistry(), logger)
		})
	default:
		log.Fatalf("unknown %s impl %q", *scenario, *impl)
	}
	return measure.Window(*warmup, *window, &ops, &errs, nil)
}

type recorder struct{ done func(bool) }

func (r recorder) ObserveProbe(_ prober.Labels, _ service.ProbeType, _ string, o prober.Outcome, _ time.Duration) {
	r.done(o == prober.Success)
}
func (recorder) ObserveLateness(time.Duration) {}

// execs runs /bin/true on the host through the agent's exec probe (as the process
// runtime runs it: in a group of its own, a cgroup where one is writable) or os/exec.
func execs() measure.Result {
	var ops, errs atomic.Int64
	c := service.DefaultCheck(service.Liveness)
	c.Exec = &service.Exec{Command: []string{"/bin/true"}}
	c.TimeoutSeconds = service.Seconds(10 * time.Second)
	rt, err := process.New(&service.Service{Containers: []service.Container{{Name: "bench", Args: []string{"true"}}}}, process.Options{})
	if err != nil {
		log.Fatal(err)
	}
	tg, err := rt.Target("bench")
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	for range *concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ok := false
				switch *impl {
				case "ours":
					ok = prober.Run(context.Background(), tg, c, prober.Settings{}).Outcome == prober.Success
				case "raw":
					ok = exec.Command("/bin/true").Run() == nil
				default:
					log.Fatalf("unknown exec impl %q", *impl)
				}
				if ok {
					ops.Add(1)
				} else {
					errs.Add(1)
				}
			}
		}()
	}
	return measure.Window(*warmup, *window, &ops, &errs, nil)
}

// serve runs a loopback TCP or HTTP server and prints its address.
func serve() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ln.Addr().String())
	if *proto == "http" {
		log.Fatal(http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })))
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		c.Close()
	}
}
