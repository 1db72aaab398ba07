package prober

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/probe-agent/probe-agent/internal/testsock"
	"github.com/probe-agent/probe-agent/service"
)

// hostTarget dials on the host; its Exec answers from a table.
type hostTarget struct {
	dialErr error
	exec    func(ctx context.Context, argv []string, out io.Writer) (int, error)
}

func (hostTarget) Host() string { return "127.0.0.1" }

func (h hostTarget) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if h.dialErr != nil {
		return nil, h.dialErr
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (h hostTarget) Exec(ctx context.Context, argv []string, out io.Writer) (int, error) {
	return h.exec(ctx, argv, out)
}

type goneError struct{}

func (goneError) Error() string     { return "container vanished" }
func (goneError) Unavailable() bool { return true }

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

func httpCheck(port int, path string, headers ...service.HTTPHeader) *service.Check {
	c := service.DefaultCheck(service.Readiness)
	c.HTTPGet = &service.HTTPGet{Port: port, Path: path, Scheme: "HTTP", HTTPHeaders: headers}
	return c
}

func TestHTTPProbeRealServer(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var lastHeaders http.Header
	var lastHost string
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastHeaders, lastHost = r.Header.Clone(), r.Host
		mu.Unlock()
		fmt.Fprint(w, "fine")
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, "SECRET-BODY")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Repeat("x", 1<<20))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.Handle("/same-host-to-fail", http.RedirectHandler("/fail", http.StatusFound))
	mux.Handle("/same-host-to-ok", http.RedirectHandler("/ok", http.StatusMovedPermanently))
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	p := port(t, srv.Listener.Addr().String())
	mux.Handle("/other-host", http.RedirectHandler("http://localhost:"+strconv.Itoa(p)+"/fail", http.StatusFound))

	cases := []struct {
		path    string
		want    Outcome
		output  string
		headers []service.HTTPHeader
	}{
		{"/ok", Success, "HTTP 200", nil},
		{"/fail", Failure, "status code 500", nil},
		{"/missing", Failure, "status code 404", nil},
		{"/big", Success, "HTTP 200", nil},
		{"/same-host-to-ok", Success, "HTTP 200", nil},
		{"/same-host-to-fail", Failure, "status code 500", nil},
		{"/other-host", Warning, "redirect to another host not followed", nil},
		{"/loop", Failure, "stopped after 10 redirects", nil},
	}
	for _, tc := range cases {
		r := Run(context.Background(), hostTarget{}, httpCheck(p, tc.path, tc.headers...), Settings{})
		if r.Outcome != tc.want || !strings.Contains(r.Output, tc.output) {
			t.Errorf("%s: %v %q, want %v ...%s...", tc.path, r.Outcome, r.Output, tc.want, tc.output)
		}
		if strings.Contains(r.Output, "SECRET-BODY") {
			t.Errorf("%s: response body leaked into the output: %q", tc.path, r.Output)
		}
	}

	// Headers: defaults, additions, removal by empty value, Host override.
	Run(context.Background(), hostTarget{}, httpCheck(p, "/ok"), Settings{UserAgent: "probe-agent/1.2.3"})
	mu.Lock()
	if ua := lastHeaders.Get("User-Agent"); ua != "probe-agent/1.2.3" {
		t.Errorf("User-Agent = %q, want the one in Settings", ua)
	}
	mu.Unlock()
	Run(context.Background(), hostTarget{}, httpCheck(p, "/ok"), Settings{})
	mu.Lock()
	if ua := lastHeaders.Get("User-Agent"); ua != DefaultUserAgent {
		t.Errorf("User-Agent = %q, want %q", ua, DefaultUserAgent)
	}
	if a := lastHeaders.Get("Accept"); a != "*/*" {
		t.Errorf("Accept = %q", a)
	}
	if c := lastHeaders.Get("Connection"); c != "close" {
		t.Errorf("keep-alive not disabled: Connection = %q", c)
	}
	mu.Unlock()
	Run(context.Background(), hostTarget{}, httpCheck(p, "/ok",
		service.HTTPHeader{Name: "X-Probe", Value: "1"}, service.HTTPHeader{Name: "Accept", Value: ""},
		service.HTTPHeader{Name: "User-Agent", Value: ""}, service.HTTPHeader{Name: "Host", Value: "model.local"}), Settings{})
	mu.Lock()
	if lastHeaders.Get("X-Probe") != "1" || lastHost != "model.local" {
		t.Errorf("custom header or Host not sent: %v host=%q", lastHeaders, lastHost)
	}
	if _, ok := lastHeaders["Accept"]; ok {
		t.Errorf("Accept not removed by an empty value")
	}
	if _, ok := lastHeaders["User-Agent"]; ok {
		t.Errorf("User-Agent not removed by an empty value")
	}
	mu.Unlock()

	// Timeout is a failure.
	c := httpCheck(p, "/slow")
	c.TimeoutSeconds = service.Seconds(100 * time.Millisecond)
	start := time.Now()
	if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Failure || !strings.Contains(r.Output, "timed out") {
		t.Errorf("slow: %v %q", r.Outcome, r.Output)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout not enforced: took %v", d)
	}

	// A vanished target is an error, not a failure.
	if r := Run(context.Background(), hostTarget{dialErr: goneError{}}, httpCheck(p, "/ok"), Settings{}); r.Outcome != Unknown {
		t.Errorf("unavailable target: %v %q", r.Outcome, r.Output)
	}
}

// TestHTTPBodyWithinTheTimeout: a 200 whose body stalls or breaks off is a failure; the
// probe ends at its timeout, body included.
func TestHTTPBodyWithinTheTimeout(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("/stall", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		fmt.Fprint(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/cut", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		fmt.Fprint(w, "partial")
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	p := port(t, srv.Listener.Addr().String())
	c := httpCheck(p, "/stall")
	c.TimeoutSeconds = service.Seconds(300 * time.Millisecond)
	start := time.Now()
	if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Failure || !strings.Contains(r.Output, "timed out") {
		t.Errorf("a body stalled past the timeout: %v %q", r.Outcome, r.Output)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the stalled body held the probe for %v", d)
	}
	if r := Run(context.Background(), hostTarget{}, httpCheck(p, "/cut"), Settings{}); r.Outcome != Failure || !strings.Contains(r.Output, "reading the body") {
		t.Errorf("a body cut short: %v %q", r.Outcome, r.Output)
	}
}

// TestHTTPOutputsCarryNoSecrets: query strings and user information never reach a
// probe's output, whether from the check's path or from a redirect.
func TestHTTPOutputsCarryNoSecrets(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.Handle("/away", http.RedirectHandler("http://user:hunter2@elsewhere.example:8443/login?token=s3cret#frag", http.StatusFound))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	p := port(t, srv.Listener.Addr().String())
	for _, c := range []*service.Check{httpCheck(testsock.RefusingPort(t), "/health?token=s3cret"), httpCheck(p, "/away?token=s3cret")} {
		r := Run(context.Background(), hostTarget{}, c, Settings{})
		if strings.Contains(r.Output, "s3cret") || strings.Contains(r.Output, "hunter2") || strings.Contains(r.Output, "frag") {
			t.Errorf("%s: output %q carries a secret", c.HTTPGet.Path, r.Output)
		}
		if !strings.Contains(r.Output, "/health") && !strings.Contains(r.Output, "elsewhere.example:8443/login") {
			t.Errorf("%s: output %q does not say where", c.HTTPGet.Path, r.Output)
		}
	}
}

// TestHTTPHostileHeadersBounded: targets that send endless response headers cost each
// probe at most MaxHeaderBytes, not Go's default 10 MiB, however many probe at once.
func TestHTTPHostileHeadersBounded(t *testing.T) {
	const targets = 40
	var checks []*service.Check
	for range targets {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nX-Endless: ")
					chunk := []byte(strings.Repeat("a", 64<<10))
					for {
						if _, err := conn.Write(chunk); err != nil {
							return
						}
					}
				}()
			}
		}()
		c := httpCheck(port(t, ln.Addr().String()), "/")
		c.TimeoutSeconds = service.Seconds(5 * time.Second)
		checks = append(checks, c)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	for _, c := range checks {
		wg.Go(func() {
			if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Failure {
				t.Errorf("endless headers: %v %q", r.Outcome, r.Output)
			}
		})
	}
	wg.Wait()
	runtime.ReadMemStats(&after)
	perProbe := (after.TotalAlloc - before.TotalAlloc) / targets
	t.Logf("%d KiB allocated per probe of a target with endless headers", perProbe>>10)
	if perProbe > 1<<20 {
		t.Fatalf("%d KiB allocated per probe of a target with endless headers; want at most 1 MiB", perProbe>>10)
	}
}

func TestHTTPSProbeSkipsVerification(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	c := httpCheck(port(t, srv.Listener.Addr().String()), "/")
	c.HTTPGet.Scheme = "HTTPS"
	if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Success {
		t.Fatalf("https: %v %q", r.Outcome, r.Output)
	}
}

func TestTCPProbe(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := port(t, ln.Addr().String())
	c := service.DefaultCheck(service.Liveness)
	c.TCPSocket = &service.TCPSocket{Port: p}
	if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Success {
		t.Errorf("open port: %v %q", r.Outcome, r.Output)
	}
	ln.Close()
	c.TCPSocket.Port = testsock.RefusingPort(t)
	if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Failure || !strings.Contains(r.Output, "refused") {
		t.Errorf("refused port: %v %q", r.Outcome, r.Output)
	}
	if r := Run(context.Background(), hostTarget{dialErr: goneError{}}, c, Settings{}); r.Outcome != Unknown {
		t.Errorf("unavailable target: %v %q", r.Outcome, r.Output)
	}
}

func TestGRPCProbe(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("model", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("sick", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	defer srv.Stop()
	p := port(t, ln.Addr().String())
	for svc, want := range map[string]Outcome{"model": Success, "": Success, "sick": Failure, "nonexistent": Failure} {
		c := service.DefaultCheck(service.Readiness)
		c.GRPC = &service.GRPC{Port: p, Service: svc}
		if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != want {
			t.Errorf("service %q: %v %q, want %v", svc, r.Outcome, r.Output, want)
		}
	}
	c := service.DefaultCheck(service.Readiness)
	c.GRPC = &service.GRPC{Port: p}
	if r := Run(context.Background(), hostTarget{dialErr: goneError{}}, c, Settings{}); r.Outcome != Unknown {
		t.Errorf("unavailable target: %v %q", r.Outcome, r.Output)
	}
	srv.Stop()
	if r := Run(context.Background(), hostTarget{}, c, Settings{}); r.Outcome != Failure {
		t.Errorf("stopped server: %v %q", r.Outcome, r.Output)
	}
}

func TestExecProbeMapping(t *testing.T) {
	t.Parallel()
	cases := []struct {
		code   int
		err    error
		out    string
		want   Outcome
		output string
	}{
		{0, nil, "ok\n", Success, "ok"},
		{1, nil, "file missing\n", Failure, "exit code 1: file missing"},
		{127, nil, `exec: "nope": executable file not found in $PATH`, Failure, "exit code 127: exec"},
		{-1, context.DeadlineExceeded, "partial", Failure, "timed out after 1s and was killed: partial"},
		{-1, goneError{}, "", Unknown, "container vanished"},
		{-1, errors.New("runtime exploded"), "", Unknown, "runtime exploded"},
	}
	for _, tc := range cases {
		tgt := hostTarget{exec: func(ctx context.Context, argv []string, out io.Writer) (int, error) {
			io.WriteString(out, tc.out)
			return tc.code, tc.err
		}}
		c := service.DefaultCheck(service.Liveness)
		c.Exec = &service.Exec{Command: []string{"x"}}
		r := Run(context.Background(), tgt, c, Settings{})
		if r.Outcome != tc.want || !strings.Contains(r.Output, tc.output) {
			t.Errorf("code %d err %v: %v %q, want %v %q", tc.code, tc.err, r.Outcome, r.Output, tc.want, tc.output)
		}
	}
}

func TestCappedBuffer(t *testing.T) {
	t.Parallel()
	var b cappedBuffer
	b.Write([]byte(strings.Repeat("a", MaxOutput-1)))
	b.Write([]byte("bcd"))
	s := b.String()
	if !strings.HasSuffix(s, "ab... (truncated)") || len(s) != MaxOutput+len("... (truncated)") {
		t.Fatalf("len %d suffix %q", len(s), s[len(s)-20:])
	}
}
