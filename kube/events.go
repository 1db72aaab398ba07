package kube

import (
	corev1 "k8s.io/api/core/v1"

	"go.uber.org/zap"
)

// Event types, as Kubernetes spells them.
const (
	Normal  = corev1.EventTypeNormal
	Warning = corev1.EventTypeWarning
)

// Event records an event on a pod of the node, as `kubectl describe pod` shows them:
// reason is what happened (Unhealthy, Killing, GPUUnhealthy), action what the agent did
// about it. Repeats are folded into a series by client-go's recorder. A pod the
// informer does not know (yet) gets no event.
func (c *Client) Event(namespace, pod, eventType, reason, action, note string) {
	p, err := c.pods.Pods(namespace).Get(pod)
	if err != nil {
		c.log.Debug("kubernetes: no event for an unknown pod", zap.String("pod", namespace+"/"+pod), zap.String("reason", reason))
		return
	}
	c.recorder.Eventf(p, nil, eventType, reason, action, "%s", clip(note))
}
