package agent

import (
	"sort"
	"time"

	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/service"
)

// ContainerStatus is one container in the status API.
type ContainerStatus struct {
	Name         string `json:"name"`
	ID           string `json:"id"`
	State        string `json:"state"`
	PID          int    `json:"pid"`
	RestartCount int    `json:"restart_count"`
	Started      bool   `json:"started"`
	Ready        bool   `json:"ready"`
	LastExitCode *int   `json:"last_exit_code"`
	// NotReadyReason says why a container is not ready: not_running, startup,
	// readiness or gpu.
	NotReadyReason string                  `json:"not_ready_reason,omitempty"`
	Message        string                  `json:"message,omitempty"`
	Probes         map[string]*ProbeStatus `json:"probes"`
	GPUs           []ContainerGPU          `json:"gpus"`
}

// ProbeStatus is one probe of a container in the status API.
type ProbeStatus struct {
	Method               string         `json:"method"`
	Result               string         `json:"result"`
	ConsecutiveSuccesses int            `json:"consecutive_successes"`
	ConsecutiveFailures  int            `json:"consecutive_failures"`
	LastOutput           string         `json:"last_output"`
	LastProbeTime        *time.Time     `json:"last_probe_time"`
	History              []HistoryEntry `json:"history"`
}

// HistoryEntry is one probe result in the status API.
type HistoryEntry struct {
	Time    time.Time `json:"time"`
	Result  string    `json:"result"`
	Output  string    `json:"output,omitempty"`
	Latency float64   `json:"duration_seconds"`
}

func probeStatus(d *prober.ProbeDetail) *ProbeStatus {
	ps := &ProbeStatus{Method: d.Method, Result: d.Value.String(), ConsecutiveSuccesses: d.ConsecutiveSuccesses,
		ConsecutiveFailures: d.ConsecutiveFailures, History: make([]HistoryEntry, len(d.History))}
	for i, r := range d.History {
		ps.History[i] = HistoryEntry{Time: r.Time, Result: r.Outcome.String(), Output: r.Output, Latency: r.Took.Seconds()}
	}
	if last, ok := d.Last(); ok {
		ps.LastOutput = last.Output
		ps.LastProbeTime = &last.Time
	}
	return ps
}

// Containers returns the status of every container, sorted by name.
func (a *Agent) Containers() []ContainerStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]ContainerStatus, 0, len(a.ctrs))
	for _, cs := range a.ctrs {
		out = append(out, a.status(cs))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Container returns one container's status.
func (a *Agent) Container(name string) (ContainerStatus, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cs := a.ctrs[name]
	if cs == nil {
		return ContainerStatus{}, false
	}
	return a.status(cs), true
}

// status builds a container's status; called with a.mu held. The probes shown are the
// current instance's, or the last instance's after it stopped.
func (a *Agent) status(cs *containerState) ContainerStatus {
	started, ready, reason := a.readiness(cs)
	st, ok := a.mgr.Status(cs.c.Name)
	if !ok || st.Instance != cs.instance {
		st = cs.lastProbes
	}
	s := ContainerStatus{
		Name: cs.c.Name, ID: cs.id, State: cs.state, PID: cs.pid, RestartCount: cs.restarts,
		Started: started, Ready: ready, NotReadyReason: reason, LastExitCode: cs.lastExit, Message: cs.message,
		Probes: map[string]*ProbeStatus{}, GPUs: a.gpuStatus(cs),
	}
	for _, t := range service.ProbeTypes {
		if st.Probes[t] != nil {
			s.Probes[t.String()] = probeStatus(st.Probes[t])
		} else if cs.c.Spec == nil {
			continue
		} else if c := cs.c.Spec.Check(t); c != nil {
			s.Probes[t.String()] = &ProbeStatus{Method: c.Method(), Result: "unknown", History: []HistoryEntry{}}
		}
	}
	return s
}

// readiness computes started and ready for a container from the probes of its
// current instance and the health of its GPUs; reason says why it is not ready
// (not_running, startup, readiness, gpu). Called with a.mu held.
func (a *Agent) readiness(cs *containerState) (started, ready bool, reason string) {
	started, ready, reason = a.probeReadiness(cs)
	if ready && a.opts.GPUReadiness && len(cs.gpuBad) > 0 {
		return started, false, "gpu"
	}
	return started, ready, reason
}

// probeReadiness is readiness from the probes alone; called with a.mu held.
func (a *Agent) probeReadiness(cs *containerState) (started, ready bool, reason string) {
	st, ok := a.mgr.Summary(cs.c.Name)
	switch {
	case cs.state != StateRunning || !ok || st.Instance != cs.instance:
		return ok && st.Instance == cs.instance && st.Started, false, "not_running"
	case !st.Started:
		return false, false, "startup"
	case st.Has[service.Readiness] && st.Values[service.Readiness] != prober.ValueSuccess:
		return true, false, "readiness"
	}
	return true, true, ""
}

// publish updates a container's gauges and its pod's verdicts; called with a.mu held.
func (a *Agent) publish(cs *containerState) {
	a.publishPod(cs)
	if a.m == nil {
		return
	}
	started, ready, _ := a.readiness(cs)
	a.m.SetContainer(metricsName(cs), ready, started, cs.backoffFor)
}

// Healthy reports whether the agent's loop is running and recently alive.
func (a *Agent) Healthy() bool {
	return a.running.Load() && time.Since(time.Unix(0, a.loopBeat.Load())) < 10*time.Second
}

// Ready reports whether the agent is healthy and its runtime reachable.
func (a *Agent) Ready() bool { return a.Healthy() && a.rt.Connected() }
