package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestCondition(t *testing.T) {
	t.Parallel()
	ready := func(c string) ContainerVerdict { return ContainerVerdict{Container: c, Ready: true} }
	failing := ContainerVerdict{Container: "app", Reason: ReasonProbeFailed, Message: "container app: readiness probe (http_get) failing"}
	gpuBad := ContainerVerdict{Container: "b", Reason: ReasonGPUUnhealthy, Message: "container b: GPU 3 (GPU-1) unhealthy: XID 79"}
	for _, tc := range []struct {
		name     string
		expected []string
		verdicts []ContainerVerdict
		status   corev1.ConditionStatus
		reason   string
		message  string
	}{
		{"no checks at all", nil, nil, corev1.ConditionTrue, ReasonNoChecks, "probe-agent probes no container of this pod"},
		{"all ready", []string{"app"}, []ContainerVerdict{ready("app"), ready("side")}, corev1.ConditionTrue, ReasonReady, "2 of 2 containers ready"},
		{"expected but not seen yet", []string{"app", "side"}, []ContainerVerdict{ready("app")}, corev1.ConditionFalse,
			ReasonContainerNotRunning, "container side: not running"},
		{"one failing", nil, []ContainerVerdict{ready("side"), failing}, corev1.ConditionFalse, ReasonProbeFailed, failing.Message},
		{"two not ready, the first by name", nil, []ContainerVerdict{gpuBad, failing}, corev1.ConditionFalse, ReasonProbeFailed,
			failing.Message + " (and 1 more not ready)"},
		{"a verdict without reason", nil, []ContainerVerdict{{Container: "x"}}, corev1.ConditionFalse, ReasonProbeFailed, "container x: not ready"},
	} {
		status, reason, message := Condition(tc.expected, tc.verdicts)
		if status != tc.status || reason != tc.reason || message != tc.message {
			t.Errorf("%s: %s %s %q, want %s %s %q", tc.name, status, reason, message, tc.status, tc.reason, tc.message)
		}
	}
	long := ContainerVerdict{Container: "x", Reason: ReasonProbeFailed, Message: strings.Repeat("é", 400)}
	if _, _, m := Condition(nil, []ContainerVerdict{long}); len(m) > maxMessage+len("…") || !strings.HasSuffix(m, "…") {
		t.Errorf("long message not clipped on a rune boundary: %d bytes", len(m))
	}
}

func TestExpectedContainersAndGate(t *testing.T) {
	t.Parallel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
		AnnotationChecks: `{"app":{"readiness_check":{"tcp_socket":{"port":80}}},"side":{}}`}},
		Spec: corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: "other"}, {ConditionType: DefaultGateCondition}}}}
	got := expectedContainers(pod)
	if len(got) != 2 || !hasGate(pod, DefaultGateCondition) || hasGate(pod, "probe-agent.io/else") {
		t.Fatalf("expected %v, gate %v", got, hasGate(pod, DefaultGateCondition))
	}
	pod.Annotations[AnnotationChecks] = `[1,2]`
	if got := expectedContainers(pod); len(got) != 0 {
		t.Fatalf("a malformed annotation names %v", got)
	}
}
