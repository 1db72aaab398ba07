package kube

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ContainerVerdict is the agent's word on one container of a pod: ready or not, and if
// not, why.
type ContainerVerdict struct {
	Container string
	Ready     bool
	// Reason is one of the Reason constants when not ready; Message says it for people,
	// naming the container and the probe or GPU (never a response body or a URL).
	Reason  string
	Message string
}

// Reasons of the readiness-gate condition.
const (
	ReasonReady               = "ContainersReady"
	ReasonNoChecks            = "NoChecks"
	ReasonProbeFailed         = "ProbeFailed"
	ReasonStartupPending      = "StartupPending"
	ReasonContainerNotRunning = "ContainerNotRunning"
	ReasonGPUUnhealthy        = "GPUUnhealthy"
	ReasonChecksInvalid       = "ChecksInvalid"
)

// AnnotationChecks is the pod annotation that holds a pod's checks, keyed by container
// name; a container named there is expected to be probed.
const AnnotationChecks = "probe-agent.io/checks"

// maxMessage bounds a condition's message.
const maxMessage = 256

// Condition is the gate condition a pod gets from the verdicts on its containers:
// True when every container the agent probes, and every container the pod's checks
// annotation names, is ready. A container the annotation names that the agent has not
// seen is not running yet. Verdicts and expected names may come in any order; the
// result does not depend on it.
func Condition(expected []string, verdicts []ContainerVerdict) (status corev1.ConditionStatus, reason, message string) {
	byName := map[string]ContainerVerdict{}
	for _, v := range verdicts {
		byName[v.Container] = v
	}
	for _, name := range expected {
		if _, ok := byName[name]; !ok {
			byName[name] = ContainerVerdict{Container: name, Reason: ReasonContainerNotRunning,
				Message: "container " + name + ": not running"}
		}
	}
	if len(byName) == 0 {
		return corev1.ConditionTrue, ReasonNoChecks, "probe-agent probes no container of this pod"
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	var bad []ContainerVerdict
	for _, name := range names {
		if v := byName[name]; !v.Ready {
			bad = append(bad, v)
		}
	}
	if len(bad) == 0 {
		return corev1.ConditionTrue, ReasonReady, fmt.Sprintf("%d of %d containers ready", len(names), len(names))
	}
	message = bad[0].Message
	if message == "" {
		message = "container " + bad[0].Container + ": not ready"
	}
	if len(bad) > 1 {
		message += fmt.Sprintf(" (and %d more not ready)", len(bad)-1)
	}
	reason = bad[0].Reason
	if reason == "" {
		reason = ReasonProbeFailed
	}
	return corev1.ConditionFalse, reason, clip(message)
}

// expectedContainers are the container names a pod's checks annotation holds; an
// annotation that is not an object names none (the agent reports it on the container
// as ChecksInvalid).
func expectedContainers(pod *corev1.Pod) []string {
	raw, ok := pod.Annotations[AnnotationChecks]
	if !ok {
		return nil
	}
	var entries map[string]json.RawMessage
	if json.Unmarshal([]byte(raw), &entries) != nil {
		return nil
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	return names
}

// hasGate reports whether the pod's spec lists the readiness gate.
func hasGate(pod *corev1.Pod, condition string) bool {
	for _, g := range pod.Spec.ReadinessGates {
		if string(g.ConditionType) == condition {
			return true
		}
	}
	return false
}

func clip(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	cut := maxMessage
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return strings.TrimSpace(s[:cut]) + "…"
}
