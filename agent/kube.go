package agent

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/kube"
	"github.com/probe-agent/probe-agent/service"
)

// Kubernetes is the API server side of the agent (package kube), when there is one:
// it takes the agent's verdicts to pods' readiness gates, Events and the node's GPU
// condition. All its methods return at once.
type Kubernetes interface {
	SetPod(namespace, pod string, verdicts []kube.ContainerVerdict)
	SetSynced()
	Event(namespace, pod, eventType, reason, action, note string)
	SetNodeGPU(status corev1.ConditionStatus, reason, message string)
	Up() bool
}

// publishPod gives the Kubernetes side the verdicts on every probed container of the
// pod cs belongs to; called with a.mu held.
func (a *Agent) publishPod(cs *containerState) {
	if a.kube == nil || cs.c.Namespace == "" {
		return
	}
	var verdicts []kube.ContainerVerdict
	for _, o := range a.ctrs {
		if o.c.Namespace == cs.c.Namespace && o.c.Pod == cs.c.Pod {
			verdicts = append(verdicts, a.verdict(o))
		}
	}
	a.kube.SetPod(cs.c.Namespace, cs.c.Pod, verdicts)
}

// verdict is the agent's word on one container for its pod's readiness gate: a
// reason and a short message naming the container and the probe or GPU, never a
// probe's output. Called with a.mu held.
func (a *Agent) verdict(cs *containerState) kube.ContainerVerdict {
	v := kube.ContainerVerdict{Container: cs.c.Container}
	if cs.c.Err != nil {
		v.Reason, v.Message = kube.ReasonChecksInvalid, "container "+cs.c.Container+": checks invalid (see the agent's status API)"
		return v
	}
	_, _, reason := a.readiness(cs)
	name := "container " + cs.c.Container
	switch reason {
	case "":
		v.Ready = true
	case "not_running":
		v.Reason, v.Message = kube.ReasonContainerNotRunning, name+": not running ("+cs.state+")"
	case "startup":
		v.Reason, v.Message = kube.ReasonStartupPending, name+": startup probe"+a.method(cs, service.Startup)+" has not succeeded yet"
	case "readiness":
		v.Reason, v.Message = kube.ReasonProbeFailed, name+": readiness probe"+a.method(cs, service.Readiness)+" failing"
	case "gpu":
		v.Reason, v.Message = kube.ReasonGPUUnhealthy, name+": "+a.badGPUs(cs)
	}
	return v
}

func (a *Agent) method(cs *containerState, t service.ProbeType) string {
	if cs.c.Spec == nil || cs.c.Spec.Check(t) == nil {
		return ""
	}
	return " (" + cs.c.Spec.Check(t).Method() + ")"
}

// badGPUs says which of the container's GPUs are unhealthy and why; called with a.mu
// held.
func (a *Agent) badGPUs(cs *containerState) string {
	var parts []string
	for _, u := range cs.gpuBad {
		st := a.gpus[u]
		s := fmt.Sprintf("GPU %d (%s) unhealthy", st.Device.Index, u)
		if x := st.Verdict.XID(); x != 0 {
			s += fmt.Sprintf(": XID %d", x)
		} else if codes := st.Verdict.Codes(); codes != "" {
			s += ": " + codes
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// event records an event on a Kubernetes container's pod; called with a.mu held.
func (a *Agent) event(cs *containerState, eventType, reason, action, note string) {
	if a.kube != nil && cs.c.Namespace != "" {
		a.kube.Event(cs.c.Namespace, cs.c.Pod, eventType, reason, action, note)
	}
}

// nodeGPU gives the Kubernetes side the node's GPU health; called with a.mu held.
func (a *Agent) nodeGPU() {
	if a.kube == nil {
		return
	}
	if a.gpuMon == nil {
		msg := a.unavailable
		if msg == "" {
			msg = "GPU monitoring is off"
		}
		a.kube.SetNodeGPU(corev1.ConditionUnknown, "GPUMonitoringUnavailable", msg)
		return
	}
	var bad, unknown []string
	n := 0
	for _, st := range a.gpus {
		n++
		switch st.Verdict.State {
		case gpu.Unhealthy:
			s := fmt.Sprintf("GPU %d (%s)", st.Device.Index, st.Device.UUID)
			if x := st.Verdict.XID(); x != 0 {
				s += fmt.Sprintf(" XID %d", x)
			}
			if codes := st.Verdict.Codes(); codes != "" {
				s += " " + codes
			}
			bad = append(bad, s)
		case gpu.Unknown:
			unknown = append(unknown, fmt.Sprintf("GPU %d", st.Device.Index))
		}
	}
	switch {
	case len(bad) > 0:
		slices.Sort(bad)
		a.kube.SetNodeGPU(corev1.ConditionFalse, "GPUUnhealthy", strings.Join(bad, "; "))
	case n == 0 || len(unknown) == n:
		a.kube.SetNodeGPU(corev1.ConditionUnknown, "GPUHealthUnknown", "no GPU health known yet")
	default:
		a.kube.SetNodeGPU(corev1.ConditionTrue, "GPUsHealthy", fmt.Sprintf("%d of %d GPUs healthy", n-len(unknown), n))
	}
}
