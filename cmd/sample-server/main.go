// Command sample-server is a small model server for trying the agent out and for its
// tests. Like a typical inference app it loads a "model" before it listens (slow
// start), answers POST / with a prediction and GET /health with its health, and it can
// be made to fail: after FAIL_AFTER_SECONDS, or at once with POST /fail.
//
//	sample-server [--port 8000] [--grpc-port 0] [--bind 0.0.0.0] [--load 3s] [--fail-after 25s] [--failing]
//	sample-server check --url http://127.0.0.1:8000/health
//
// LOAD_SECONDS and FAIL_AFTER_SECONDS set --load and --fail-after from the environment.
// With --grpc-port it also serves grpc.health.v1, SERVING while healthy and NOT_SERVING
// once failing. For tests, GET /status/{code} answers with that status and GET /redirect?to=URL
// redirects there.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2:]))
	}
	fs := flag.NewFlagSet("sample-server", flag.ExitOnError)
	port := fs.Int("port", envInt("PORT", 8000), "port to listen on")
	grpcPort := fs.Int("grpc-port", 0, "port for the gRPC health service (0: none)")
	bind := fs.String("bind", "0.0.0.0", "address to bind")
	load := fs.Duration("load", envSeconds("LOAD_SECONDS", 0), "time to load the model before listening")
	failAfter := fs.Duration("fail-after", envSeconds("FAIL_AFTER_SECONDS", 0), "start failing /health this long after listening (0: never)")
	failing := fs.Bool("failing", false, "fail /health from the start")
	_ = fs.Parse(os.Args[1:])
	log.SetPrefix("sample-server: ")
	log.SetFlags(0)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Printf("loading model (%v)", *load)
	select {
	case <-time.After(*load):
	case <-ctx.Done():
		return
	}
	h := newHealth(*failing)
	ln, err := net.Listen("tcp", net.JoinHostPort(*bind, strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("model loaded; listening on %s", ln.Addr())
	if *grpcPort != 0 {
		gln, err := net.Listen("tcp", net.JoinHostPort(*bind, strconv.Itoa(*grpcPort)))
		if err != nil {
			log.Fatal(err)
		}
		gs := grpc.NewServer()
		healthpb.RegisterHealthServer(gs, h.grpc)
		go func() { _ = gs.Serve(gln) }()
		defer gs.Stop()
		log.Printf("gRPC health on %s", gln.Addr())
	}
	if *failAfter > 0 {
		time.AfterFunc(*failAfter, func() {
			log.Printf("simulating a wedged model: /health now fails")
			h.set(false)
		})
	}
	srv := &http.Server{Handler: handler(h), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		log.Printf("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// health is the server's health, as HTTP and as gRPC see it.
type health struct {
	unhealthy atomic.Bool
	grpc      *grpchealth.Server
}

func newHealth(failing bool) *health {
	h := &health{grpc: grpchealth.NewServer()}
	h.set(!failing)
	return h
}

func (h *health) set(healthy bool) {
	h.unhealthy.Store(!healthy)
	status := healthpb.HealthCheckResponse_SERVING
	if !healthy {
		status = healthpb.HealthCheckResponse_NOT_SERVING
	}
	h.grpc.SetServingStatus("", status)
	h.grpc.SetServingStatus("model", status)
}

func handler(h *health) http.Handler {
	mux := http.NewServeMux()
	healthz := func(w http.ResponseWriter, r *http.Request) {
		if h.unhealthy.Load() {
			http.Error(w, "model unhealthy", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	}
	mux.HandleFunc("GET /health", healthz)
	// GET / answers as /health does, as the EAS documentation's Flask example does.
	mux.HandleFunc("GET /{$}", healthz)
	mux.HandleFunc("POST /{$}", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"prediction": len(body) % 10, "input_bytes": len(body)})
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) {
		h.set(false)
		fmt.Fprintln(w, "failing")
	})
	mux.HandleFunc("POST /recover", func(w http.ResponseWriter, r *http.Request) {
		h.set(true)
		fmt.Fprintln(w, "recovered")
	})
	mux.HandleFunc("GET /status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 100 || code > 999 {
			http.Error(w, "bad status code", http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
	})
	mux.HandleFunc("GET /redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
	})
	return mux
}

// check is an exec health check: exit 0 when url answers 2xx or 3xx, 1 otherwise.
func check(args []string) int {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:8000/health", "URL to GET")
	timeout := fs.Duration("timeout", 900*time.Millisecond, "request timeout")
	_ = fs.Parse(args)
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get(*url)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	if resp.StatusCode >= 400 {
		return 1
	}
	return 0
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envSeconds(name string, def time.Duration) time.Duration {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return time.Duration(v * float64(time.Second))
	}
	return def
}
