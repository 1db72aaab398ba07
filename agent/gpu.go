package agent

import (
	"slices"
	"sort"

	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/kube"
)

// ContainerGPU is one GPU of a container in the status API.
type ContainerGPU struct {
	Index   int          `json:"index"`
	UUID    string       `json:"uuid"`
	Name    string       `json:"name"`
	Health  string       `json:"health"`
	XID     uint64       `json:"xid,omitempty"`
	Reasons []gpu.Reason `json:"reasons,omitempty"`
}

// AttachGPU hands the agent a GPU monitor that became available after it started (a
// driver that loaded late). It is ignored when the agent already has one.
func (a *Agent) AttachGPU(mon *gpu.Monitor) {
	select {
	case a.attach <- mon:
	default:
	}
}

// GPUMonitor returns the agent's GPU monitor, or nil.
func (a *Agent) GPUMonitor() *gpu.Monitor {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gpuMon
}

// attached takes a late monitor: every known container is mapped to its GPUs.
func (a *Agent) attached(mon *gpu.Monitor) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gpuMon, a.unavailable = mon, ""
	for _, cs := range a.ctrs {
		a.resolveGPUs(cs)
	}
	a.nodeGPU()
}

// resolveGPUs maps the container's GPU request onto the node's GPUs; called with a.mu
// held.
func (a *Agent) resolveGPUs(cs *containerState) {
	if a.gpuMon == nil || cs.c.GPUs.Empty() {
		cs.gpus = nil
		a.checkGPUs(cs)
		return
	}
	matched, unmatched := cs.c.GPUs.Resolve(a.gpuMon.Devices())
	cs.gpus = matched
	if len(unmatched) > 0 {
		a.log.Warn("container gpus not found on this node", append(a.fields(cs), zap.Strings("gpus", unmatched),
			zap.Strings("sources", cs.c.GPUs.Sources))...)
	}
	a.checkGPUs(cs)
}

// gpuChanged takes the monitor's new state and re-evaluates every container.
func (a *Agent) gpuChanged() {
	mon := a.GPUMonitor()
	if mon == nil {
		return
	}
	snap := mon.Snapshot()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range snap.GPUs {
		a.gpus[st.Device.UUID] = st
	}
	names := make([]string, 0, len(a.ctrs))
	for name := range a.ctrs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		cs := a.ctrs[name]
		a.checkGPUs(cs)
		a.publish(cs)
	}
	a.nodeGPU()
}

// checkGPUs finds the container's Unhealthy GPUs and logs when that set changes;
// called with a.mu held.
func (a *Agent) checkGPUs(cs *containerState) {
	var bad []string
	for _, d := range cs.gpus {
		if a.gpus[d.UUID].Verdict.State == gpu.Unhealthy {
			bad = append(bad, d.UUID)
		}
	}
	if slices.Equal(bad, cs.gpuBad) {
		return
	}
	cs.gpuBad = bad
	if len(bad) == 0 {
		a.log.Info("container gpu healthy", append(a.fields(cs), zap.Strings("gpu_uuids", uuids(cs.gpus)))...)
		return
	}
	var indexes []int
	var xids []uint64
	var reasons []string
	for _, u := range bad {
		st := a.gpus[u]
		indexes = append(indexes, st.Device.Index)
		if x := st.Verdict.XID(); x != 0 {
			xids = append(xids, x)
		}
		reasons = append(reasons, st.Verdict.Codes())
	}
	readiness := "not ready"
	if !a.opts.GPUReadiness {
		readiness = "unchanged (--gpu-readiness=false)"
	}
	a.log.Warn("container gpu unhealthy", append(a.fields(cs), zap.Strings("gpu_uuids", bad), zap.Ints("gpu_indexes", indexes),
		zap.Uint64s("xids", xids), zap.Strings("reasons", reasons), zap.String("readiness", readiness))...)
	if a.opts.GPUReadiness {
		a.event(cs, kube.Warning, "GPUUnhealthy", "TakeReadiness", "container "+cs.c.Container+": "+a.badGPUs(cs)+"; not ready until the GPU is healthy")
	}
}

func uuids(devs []gpu.Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.UUID
	}
	return out
}

// gpuStatus lists the container's GPUs for the status API; called with a.mu held.
func (a *Agent) gpuStatus(cs *containerState) []ContainerGPU {
	out := make([]ContainerGPU, 0, len(cs.gpus))
	for _, d := range cs.gpus {
		st, ok := a.gpus[d.UUID]
		g := ContainerGPU{Index: d.Index, UUID: d.UUID, Name: d.Name, Health: gpu.Unknown.String()}
		if ok {
			g.Health, g.XID, g.Reasons = st.Verdict.State.String(), st.Verdict.XID(), st.Verdict.Reasons
		}
		out = append(out, g)
	}
	return out
}

// ContainerGPUs lists the containers that use GPUs, for the GPU metrics.
func (a *Agent) ContainerGPUs() []gpu.ContainerGPUs {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []gpu.ContainerGPUs
	for _, cs := range a.ctrs {
		if len(cs.gpus) > 0 {
			out = append(out, gpu.ContainerGPUs{Namespace: cs.c.Namespace, Pod: cs.c.Pod, Container: cs.c.Container,
				GPUs: cs.gpus, Healthy: len(cs.gpuBad) == 0})
		}
	}
	return out
}

// GPUReport is the node's GPUs with the containers on each, for /v1/gpus.
func (a *Agent) GPUReport() gpu.Report {
	a.mu.Lock()
	mon, msg := a.gpuMon, a.unavailable
	a.mu.Unlock()
	if mon == nil {
		if msg == "" {
			msg = "GPU monitoring is off"
		}
		return gpu.Report{Message: msg, GPUs: []gpu.GPUReport{}}
	}
	snap := mon.Snapshot()
	a.mu.Lock()
	on := map[string][]string{}
	for _, cs := range a.ctrs {
		for _, d := range cs.gpus {
			on[d.UUID] = append(on[d.UUID], cs.c.Name)
		}
	}
	a.mu.Unlock()
	for _, names := range on {
		sort.Strings(names)
	}
	return gpu.NewReport(snap, on)
}
