package agent

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the agent's HTTP interface: /metrics, /healthz, /readyz,
// /v1/containers, /v1/containers/{name} and /v1/gpus. gatherer may be nil for no /metrics.
func (a *Agent) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	if gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		plain(w, a.Healthy(), "agent loop not running")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.Ready() && a.kube != nil && !a.kube.Up() {
			// Probing and acting go on; only what goes to the API server waits.
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write([]byte("ok\nkubernetes: API server unreachable; readiness gates, events and the node condition wait for it\n"))
			return
		}
		plain(w, a.Ready(), "runtime not reachable")
	})
	mux.HandleFunc("GET /v1/containers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Containers())
	})
	mux.HandleFunc("GET /v1/gpus", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.GPUReport())
	})
	mux.HandleFunc("GET /v1/containers/{name...}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if c, ok := a.Container(name); ok {
			writeJSON(w, http.StatusOK, c)
			return
		}
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "container " + name + " not found"})
	})
	return mux
}

func plain(w http.ResponseWriter, ok bool, why string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(why + "\n"))
		return
	}
	w.Write([]byte("ok\n"))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
