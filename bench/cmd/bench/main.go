// Command bench runs the side-by-side benchmarks: each subject in its own process, each
// ratio against a baseline measured in the same run. It prints a table and writes
// results.json (and results-meta.json, which the report command reads).
//
//	go run ./cmd/bench [-quick] [-out results.json]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/probe-agent/probe-agent/bench/internal/measure"
	"github.com/probe-agent/probe-agent/bench/internal/results"
)

var (
	quick = flag.Bool("quick", false, "every scenario, shortened (under a minute)")
	out   = flag.String("out", "results.json", "where to write the rows")
)

type runner struct {
	dir       string
	rows      []results.Row
	quick     bool
	pinClient []string
	pinServer []string
	skipped   []string
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	started := time.Now()
	dir, err := os.MkdirTemp("", "probe-agent-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, cmd := range []string{"sched", "subject"} {
		b := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), "./cmd/"+cmd)
		b.Stderr = os.Stderr
		if err := b.Run(); err != nil {
			log.Fatalf("building %s: %v", cmd, err)
		}
	}
	r := &runner{dir: dir, quick: *quick}
	if _, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() >= 2 {
		// Client on CPU 0, loopback server on CPU 1, as the baselines were measured.
		r.pinClient, r.pinServer = []string{"taskset", "-c", "0"}, []string{"taskset", "-c", "1"}
	}
	r.scheduler()
	r.slowProbes()
	r.network("tcp")
	r.network("http")
	r.hostExec()
	r.containerExec()
	r.nodeExec()
	r.print()
	if err := write(*out, r.rows); err != nil {
		log.Fatal(err)
	}
	mode := "full"
	if *quick {
		mode = "quick"
	}
	meta := results.Meta{Date: time.Now().UTC().Format(time.RFC3339), Commit: commit(), Mode: mode, GoVersion: runtime.Version(),
		CPU: cpuModel(), Cores: runtime.NumCPU(), Kernel: kernel(), Seconds: int(time.Since(started).Seconds()),
		Skipped: strings.Join(r.skipped, "; ")}
	if err := write(strings.TrimSuffix(*out, ".json")+"-meta.json", meta); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\n%d rows in %s (%s mode, %v)\n", len(r.rows), *out, mode, time.Since(started).Round(time.Second))
}

func write(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// dur picks the quick or the full value.
func (r *runner) dur(quick, full time.Duration) time.Duration {
	if r.quick {
		return quick
	}
	return full
}

func (r *runner) run(pin []string, bin string, args ...string) measure.Result {
	argv := append(append(append([]string{}, pin...), filepath.Join(r.dir, bin)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	outb, err := cmd.Output()
	if err != nil {
		log.Fatalf("%s %v: %v", bin, args, err)
	}
	var m measure.Result
	if err := json.Unmarshal(outb, &m); err != nil {
		log.Fatalf("%s %v: %v: %s", bin, args, err, outb)
	}
	return m
}

// add appends a row; goal 0 means none; higher says the goal bounds from below.
func (r *runner) add(scenario, subject, baseline, metric, unit string, value, base, goal float64, higher bool) {
	row := results.Row{Scenario: scenario, Subject: subject, Baseline: baseline, Metric: metric, Unit: unit,
		Value: round(value), BaselineValue: round(base)}
	if base != 0 {
		row.Ratio = round(value / base)
	}
	if goal != 0 {
		g := goal
		pass := row.Ratio <= g
		if higher {
			pass = row.Ratio >= g
		}
		row.Goal, row.Pass = &g, &pass
	}
	r.rows = append(r.rows, row)
}

func round(f float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'g', 4, 64), 64)
	return v
}

type schedMetrics struct {
	cpuPerFire, cpuPct, rssPerProbe, rssMB, p50, p99, p999, early float64
}

func sched(m measure.Result, n int) schedMetrics {
	return schedMetrics{
		cpuPerFire:  float64(m.CPUNanos) / float64(max(m.Ops, 1)),
		cpuPct:      100 * float64(m.CPUNanos) / float64(m.WallNanos),
		rssPerProbe: float64(m.RSSBytes-m.BaseRSS) / float64(n),
		rssMB:       float64(m.RSSBytes) / (1 << 20),
		p50:         float64(m.P50Nanos) / 1e6, p99: float64(m.P99Nanos) / 1e6, p999: float64(m.P999Nanos) / 1e6,
		early: float64(m.Errors),
	}
}

// scheduler compares the agent's wheel and pool with time.AfterFunc re-armed and one
// goroutine and ticker per probe (the kubelet's pattern), with no-op probe bodies.
func (r *runner) scheduler() {
	type config struct {
		name   string
		n      int
		period time.Duration
		busy   time.Duration
		impls  []string
	}
	all := []string{"wheel", "afterfunc", "ticker"}
	configs := []config{
		{"1k@10s idle", 1000, 10 * time.Second, 0, all},
		{"100k@1s", 100_000, time.Second, 0, all},
		{"1M@10s", 1_000_000, 10 * time.Second, 0, all},
		// Lateness while probe bodies keep about one core busy (0.8 ms each, 1000/s).
		{"1k@1s busy", 1000, time.Second, 800 * time.Microsecond, []string{"wheel", "afterfunc"}},
	}
	for _, c := range configs {
		res := map[string]schedMetrics{}
		for _, impl := range c.impls {
			warm, win := r.dur(300*time.Millisecond, 3*time.Second), r.dur(800*time.Millisecond, 10*time.Second)
			fmt.Fprintf(os.Stderr, "sched %s %s\n", c.name, impl)
			m := r.run(nil, "sched", "-impl", impl, "-n", strconv.Itoa(c.n), "-period", c.period.String(),
				"-warmup", warm.String(), "-window", win.String(), "-busy", c.busy.String())
			res[impl] = sched(m, c.n)
		}
		sc := "scheduler " + c.name
		w := res["wheel"]
		for _, b := range c.impls[1:] {
			o := res[b]
			cpuGoal, memGoal := 0.0, 0.0
			if c.name == "100k@1s" && b == "afterfunc" {
				cpuGoal = 0.40
			}
			if c.name == "100k@1s" && b == "ticker" {
				memGoal = 0.05
			}
			if c.busy == 0 {
				r.add(sc, "wheel", b, "cpu_per_fire", "ns", w.cpuPerFire, o.cpuPerFire, cpuGoal, false)
				r.add(sc, "wheel", b, "cpu", "% of a core", w.cpuPct, o.cpuPct, 0, false)
				r.add(sc, "wheel", b, "memory_per_probe", "bytes", w.rssPerProbe, o.rssPerProbe, memGoal, false)
			}
			r.add(sc, "wheel", b, "lateness_p50", "ms", w.p50, o.p50, 0, false)
			r.add(sc, "wheel", b, "lateness_p99", "ms", w.p99, o.p99, 0, false)
			r.add(sc, "wheel", b, "lateness_p999", "ms", w.p999, o.p999, 0, false)
		}
		if t, ok := res["ticker"]; ok {
			a := res["afterfunc"]
			r.add(sc, "ticker", "afterfunc", "cpu_per_fire", "ns", t.cpuPerFire, a.cpuPerFire, 0, false)
			r.add(sc, "ticker", "afterfunc", "memory_per_probe", "bytes", t.rssPerProbe, a.rssPerProbe, 0, false)
		}
		// Absolute budgets, as rows whose baseline is the budget itself.
		r.add(sc, "wheel", "budget", "fires_before_due", "fires", w.early, 1, 1, false)
		switch c.name {
		case "1k@10s idle":
			r.add(sc, "wheel", "budget", "cpu", "% of a core", w.cpuPct, 0.3, 1, false)
			r.add(sc, "wheel", "budget", "lateness_p99", "ms", w.p99, 2, 1, false)
		case "100k@1s":
			r.add(sc, "wheel", "budget", "cpu", "% of a core", w.cpuPct, 7, 1, false)
			r.add(sc, "wheel", "budget", "rss", "MB", w.rssMB, 20, 1, false)
			r.add(sc, "wheel", "budget", "memory_per_probe", "bytes", w.rssPerProbe, 128, 1, false)
		case "1k@1s busy":
			r.add(sc, "wheel", "budget", "lateness_p99", "ms", w.p99, 10, 1, false)
		}
	}
}

// slowProbes measures whether slow probes delay the others: 1,000 probes a second on
// the agent's wheel and pool, every 20th of them (5 %) holding its worker for 2 s as a
// probe of a hung target does, against the same run with no slow probes. Lateness is
// the fast probes' due-to-start time.
func (r *runner) slowProbes() {
	warm, win := r.dur(2500*time.Millisecond, 3*time.Second), r.dur(time.Second, 10*time.Second)
	res := map[string]schedMetrics{}
	for _, c := range []struct{ name, every string }{{"no slow probes", "0"}, {"5% slow", "20"}} {
		fmt.Fprintf(os.Stderr, "sched slow probes: %s\n", c.name)
		m := r.run(nil, "sched", "-impl", "wheel", "-n", "1000", "-period", "1s", "-slow-every", c.every, "-slow", "2s",
			"-warmup", warm.String(), "-window", win.String())
		res[c.name] = sched(m, 1000)
	}
	sc := "scheduler 1k@1s, 5% of probes slow (2 s each)"
	slow, none := res["5% slow"], res["no slow probes"]
	r.add(sc, "wheel", "no slow probes", "lateness_p50", "ms", slow.p50, none.p50, 0, false)
	r.add(sc, "wheel", "no slow probes", "lateness_p99", "ms", slow.p99, none.p99, 2, false)
	r.add(sc, "wheel", "budget", "lateness_p99", "ms", slow.p99, 10, 1, false)
}

// server starts a loopback target and returns its address and a stop function.
func (r *runner) server(proto string) (string, func()) {
	argv := append(append([]string{}, r.pinServer...), filepath.Join(r.dir, "subject"), "-scenario", "server", "-proto", proto)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		log.Fatal(err)
	}
	return strings.TrimSpace(addr), func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

// network compares TCP or HTTP probing: the agent's prober and scheduler, a raw Go
// loop (the limit here), the kubelet's own probers in its worker pattern, and
// blackbox_exporter's prober.
func (r *runner) network(proto string) {
	addr, stop := r.server(proto)
	defer stop()
	warm, win := r.dur(200*time.Millisecond, time.Second), r.dur(500*time.Millisecond, 3*time.Second)
	perCore := r.rounds([]string{"ours", "raw", "kubelet", "blackbox"}, func(impl string) float64 {
		fmt.Fprintf(os.Stderr, "%s saturate %s\n", proto, impl)
		m := r.run(r.pinClient, "subject", "-scenario", proto, "-impl", impl, "-target", addr,
			"-warmup", warm.String(), "-window", win.String())
		return float64(m.Ops) / (float64(m.CPUNanos) / 1e9)
	})
	sc := proto + " probes at saturation"
	// The raw loop is the floor a Go prober can reach; blackbox_exporter and the kubelet
	// are reported for comparison.
	r.add(sc, "ours", "raw", "probes_per_core_second", "probes/s", perCore["ours"], perCore["raw"], 0.95, true)
	r.add(sc, "ours", "blackbox", "probes_per_core_second", "probes/s", perCore["ours"], perCore["blackbox"], 0, true)
	r.add(sc, "ours", "kubelet", "probes_per_core_second", "probes/s", perCore["ours"], perCore["kubelet"], 0, true)
	r.add(sc, "kubelet", "raw", "probes_per_core_second", "probes/s", perCore["kubelet"], perCore["raw"], 0, true)
	r.add(sc, "blackbox", "raw", "probes_per_core_second", "probes/s", perCore["blackbox"], perCore["raw"], 0, true)

	const rate = 1000
	cpuPer := r.rounds([]string{"ours", "kubelet", "raw", "blackbox"}, func(impl string) float64 {
		fmt.Fprintf(os.Stderr, "%s rate %s\n", proto, impl)
		// The periodic designs spread their first probes over one second.
		rw := r.dur(200*time.Millisecond, time.Second)
		if impl == "ours" || impl == "kubelet" {
			rw = r.dur(1100*time.Millisecond, 1500*time.Millisecond)
		}
		m := r.run(r.pinClient, "subject", "-scenario", proto, "-impl", impl, "-target", addr, "-rate", strconv.Itoa(rate),
			"-warmup", rw.String(), "-window", win.String())
		return float64(m.CPUNanos) / 1e3 / float64(max(m.Ops, 1))
	})
	sc = fmt.Sprintf("%s probes at %d/s", proto, rate)
	r.add(sc, "ours", "kubelet", "cpu_per_probe", "µs", cpuPer["ours"], cpuPer["kubelet"], 0.7, false)
	r.add(sc, "ours", "raw", "cpu_per_probe", "µs", cpuPer["ours"], cpuPer["raw"], 0, false)
	r.add(sc, "blackbox", "raw", "cpu_per_probe", "µs", cpuPer["blackbox"], cpuPer["raw"], 0, false)
}

// rounds measures each subject once (quick) or three times alternating (full) and
// returns each subject's median, so that a noisy moment does not decide a ratio.
func (r *runner) rounds(impls []string, measure func(impl string) float64) map[string]float64 {
	n := 3
	if r.quick {
		n = 1
	}
	vals := map[string][]float64{}
	for range n {
		for _, impl := range impls {
			vals[impl] = append(vals[impl], measure(impl))
		}
	}
	med := map[string]float64{}
	for impl, v := range vals {
		slices.Sort(v)
		med[impl] = v[len(v)/2]
	}
	return med
}

// hostExec compares exec probes on the host with raw os/exec.
func (r *runner) hostExec() {
	warm, win := r.dur(200*time.Millisecond, time.Second), r.dur(600*time.Millisecond, 3*time.Second)
	rate := r.rounds([]string{"ours", "raw"}, func(impl string) float64 {
		fmt.Fprintf(os.Stderr, "exec %s\n", impl)
		m := r.run(nil, "subject", "-scenario", "exec", "-impl", impl, "-concurrency", "2",
			"-warmup", warm.String(), "-window", win.String())
		return float64(m.Ops) / (float64(m.WallNanos) / 1e9)
	})
	r.add("host exec", "ours", "raw", "execs_per_second", "execs/s", rate["ours"], rate["raw"], 0.9, true)
}

// mainBench runs a Go benchmark of the main module's runtime/containerd package and
// returns the metrics of its result line by unit ("agent-cpu-µs/exec": 2830). When it
// did not run (no containerd here) or a metric in need is missing, the scenario is
// recorded as skipped with the reason.
func (r *runner) mainBench(scenario, name, benchtime string, need []string, args ...string) (map[string]float64, bool) {
	fmt.Fprintf(os.Stderr, "%s\n", scenario)
	argv := append([]string{"test", "-run", "^$", "-bench", name, "-benchtime", benchtime, "./runtime/containerd/"}, args...)
	cmd := exec.Command("go", argv...)
	cmd.Dir = ".."
	outb, err := cmd.CombinedOutput()
	v := map[string]float64{}
	for _, line := range strings.Split(string(outb), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "Benchmark"+name) {
			continue
		}
		for i := 2; i+1 < len(f); i += 2 { // value-unit pairs after the iterations
			v[f[i+1]], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	missing := err != nil
	for _, m := range need {
		missing = missing || v[m] == 0
	}
	if !missing {
		return v, true
	}
	reason := name + " did not run"
	if i := strings.Index(string(outb), "containerd tests need"); i >= 0 {
		reason = strings.SplitN(string(outb[i:]), "\n", 2)[0]
	}
	fmt.Fprintf(os.Stderr, "%s skipped: %s\n%s", scenario, reason, outb)
	r.skipped = append(r.skipped, scenario+": "+reason)
	return nil, false
}

// containerExec runs the containerd exec benchmark of the main module: the agent's exec
// probe interleaved with a bare containerd client exec loop on the same container.
func (r *runner) containerExec() {
	const sc = "container exec"
	v, ok := r.mainBench(sc, "ExecAgainstBareClient", r.pick("10x", "100x"),
		[]string{"agent-cpu-µs/exec", "bare-cpu-µs/exec", "agent-µs/exec", "bare-µs/exec"})
	if !ok {
		return
	}
	r.add(sc, "ours", "bare containerd client", "cpu_per_exec", "µs", v["agent-cpu-µs/exec"], v["bare-cpu-µs/exec"], 1.05, false)
	r.add(sc, "ours", "bare containerd client", "latency", "µs", v["agent-µs/exec"], v["bare-µs/exec"], 0, false)
}

// nodeExec runs the whole-node exec benchmark of the main module: exec probes through
// the runner and through containerd exec, interleaved with idle baselines, node CPU
// from /proc/stat.
func (r *runner) nodeExec() {
	const sc = "container exec, whole node"
	v, ok := r.mainBench(sc, "ExecNodeCPU", r.pick("1x", "3x"), []string{"runner-probes", "exec-probes"},
		"-args", "-exec-window", r.pick("1s", "5s"))
	if !ok {
		return
	}
	r.add(sc, "runner", "containerd exec", "node_cpu_per_probe", "µs", v["runner-node-cpu-µs/probe"], v["exec-node-cpu-µs/probe"], 0.1, false)
	r.add(sc, "runner", "containerd exec", "latency_p99", "µs", v["runner-p99-µs"], v["exec-p99-µs"], 0.2, false)
	r.add(sc, "runner", "containerd exec", "latency_p50", "µs", v["runner-p50-µs"], v["exec-p50-µs"], 0, false)
	r.add(sc, "runner", "containerd exec", "probes_measured", "probes", v["runner-probes"], v["exec-probes"], 0, false)
	if kb := v["runner-rss-KiB"]; kb > 0 {
		r.add(sc, "runner", "", "resident_memory", "KiB", kb, 0, 0, false)
		r.add(sc, "runner", "", "anonymous_memory", "KiB", v["runner-anon-KiB"], 0, 0, false)
	}
}

// pick chooses the quick or the full value of a setting.
func (r *runner) pick(quick, full string) string {
	if r.quick {
		return quick
	}
	return full
}

func (r *runner) print() {
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tSUBJECT\tBASELINE\tMETRIC\tVALUE\tBASELINE\tRATIO\tGOAL\tPASS")
	for _, row := range r.rows {
		goal, pass := "", ""
		if row.Goal != nil {
			goal = strconv.FormatFloat(*row.Goal, 'g', -1, 64)
			pass = strconv.FormatBool(*row.Pass)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g %s\t%g\t%g\t%s\t%s\n", row.Scenario, row.Subject, row.Baseline,
			row.Metric, row.Value, row.Unit, row.BaselineValue, row.Ratio, goal, pass)
	}
	tw.Flush()
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown"
}

// commit names the checkout being measured, so that a results page says what it was
// measured at.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}
