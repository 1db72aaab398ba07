package kube

import (
	"context"
	"encoding/json"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// nodeCondition is the GPU health condition the agent wants on its node.
type nodeCondition struct {
	status          corev1.ConditionStatus
	reason, message string
}

// SetNodeGPU records the node's GPU health; the node condition follows when it
// changes. It never blocks.
func (c *Client) SetNodeGPU(status corev1.ConditionStatus, reason, message string) {
	c.mu.Lock()
	c.node, c.nodeSet = nodeCondition{status: status, reason: reason, message: clip(message)}, true
	c.mu.Unlock()
	select {
	case c.nodeWake <- struct{}{}:
	default:
	}
}

// nodeLoop writes the node condition whenever the wanted one differs from the node's,
// retrying with back-off.
func (c *Client) nodeLoop(ctx context.Context) {
	retry := 200 * time.Millisecond
	var retryC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.nodeWake:
		case <-retryC:
		}
		if err := c.syncNode(ctx); err != nil {
			c.log.Debug("kubernetes: node condition not written; retrying", zap.Error(err))
			retryC = time.After(retry)
			retry = min(2*retry, 30*time.Second)
			continue
		}
		retryC, retry = nil, 200*time.Millisecond
	}
}

func (c *Client) syncNode(ctx context.Context) error {
	c.mu.Lock()
	want, set := c.node, c.nodeSet
	c.mu.Unlock()
	if !set {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	node, err := c.cs.CoreV1().Nodes().Get(rctx, c.opts.NodeName, metav1.GetOptions{})
	c.setUp(err == nil, err)
	if err != nil {
		return err
	}
	var current *corev1.NodeCondition
	for i := range node.Status.Conditions {
		if string(node.Status.Conditions[i].Type) == c.opts.GPUCondition {
			current = &node.Status.Conditions[i]
		}
	}
	if current != nil && current.Status == want.status && current.Reason == want.reason && current.Message == want.message {
		return nil
	}
	now := metav1.NewTime(time.Now())
	transition := now
	if current != nil && current.Status == want.status {
		transition = current.LastTransitionTime
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeConditionType(c.opts.GPUCondition), Status: want.status, Reason: want.reason, Message: want.message,
		LastHeartbeatTime: now, LastTransitionTime: transition,
	}}}})
	if err != nil {
		return err
	}
	_, err = c.cs.CoreV1().Nodes().Patch(rctx, c.opts.NodeName, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager}, "status")
	if err != nil {
		return err
	}
	c.writes.Add(1)
	c.log.Info("node condition written", zap.String("node", c.opts.NodeName), zap.String("condition", c.opts.GPUCondition),
		zap.String("status", string(want.status)), zap.String("reason", want.reason), zap.String("message", want.message))
	return nil
}
