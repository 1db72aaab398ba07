// Package measure holds what the benchmark subjects share: their result, CPU time from
// getrusage, VmRSS, a lateness histogram and the warm-up and window protocol.
package measure

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is what a subject reports.
type Result struct {
	Ops        int64 `json:"ops"`
	Errors     int64 `json:"errors"`
	CPUNanos   int64 `json:"cpu_ns"`
	WallNanos  int64 `json:"wall_ns"`
	RSSBytes   int64 `json:"rss_bytes"`
	BaseRSS    int64 `json:"base_rss_bytes"`
	P50Nanos   int64 `json:"p50_ns"`
	P99Nanos   int64 `json:"p99_ns"`
	P999Nanos  int64 `json:"p999_ns"`
	Goroutines int   `json:"goroutines"`
}

// CPUNow is the CPU time, user and system, of this process so far.
func CPUNow() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// RSS is the resident set size of this process in bytes.
func RSS() int64 {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Hist is a lateness histogram in 10 µs buckets up to 200 ms.
type Hist struct{ b [20001]atomic.Int64 }

// Add records one lateness.
func (h *Hist) Add(d time.Duration) {
	h.b[min(max(int(d/(10*time.Microsecond)), 0), len(h.b)-1)].Add(1)
}

// Reset clears the histogram.
func (h *Hist) Reset() {
	for i := range h.b {
		h.b[i].Store(0)
	}
}

// Quantile returns the q-quantile, rounded up to its bucket.
func (h *Hist) Quantile(q float64) int64 {
	var total int64
	for i := range h.b {
		total += h.b[i].Load()
	}
	var acc int64
	for i := range h.b {
		acc += h.b[i].Load()
		if total > 0 && float64(acc) >= q*float64(total) {
			return int64(i+1) * int64(10*time.Microsecond)
		}
	}
	return 0
}

// Window sleeps through the warm-up, then measures operations, CPU and lateness over
// the window.
func Window(warmup, window time.Duration, ops, errs *atomic.Int64, h *Hist) Result {
	time.Sleep(warmup)
	if h != nil {
		h.Reset()
	}
	o0, c0, t0 := ops.Load(), CPUNow(), time.Now()
	time.Sleep(window)
	r := Result{Ops: ops.Load() - o0, CPUNanos: CPUNow() - c0, WallNanos: int64(time.Since(t0))}
	if errs != nil {
		r.Errors = errs.Load()
	}
	if h != nil {
		r.P50Nanos, r.P99Nanos, r.P999Nanos = h.Quantile(0.5), h.Quantile(0.99), h.Quantile(0.999)
	}
	return r
}

// Spin burns CPU for d.
func Spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}
