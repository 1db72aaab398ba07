package kube

import (
	"context"
	"encoding/json"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// SetPod records the agent's verdicts on the containers it probes in a pod; the gate
// condition follows if the pod lists the gate. It never blocks.
func (c *Client) SetPod(namespace, pod string, verdicts []ContainerVerdict) {
	key := namespace + "/" + pod
	c.mu.Lock()
	if len(verdicts) == 0 {
		delete(c.desired, key)
	} else {
		c.desired[key] = verdicts
	}
	synced := c.synced
	c.mu.Unlock()
	if synced {
		c.queue.Add(key)
	}
}

// SetSynced says that the agent knows every container of the node (its saved state is
// restored and the runtime listed): until then no condition is written, so that a
// restarted agent never writes False for a container it has not found yet.
func (c *Client) SetSynced() {
	c.mu.Lock()
	already := c.synced
	c.synced = true
	c.mu.Unlock()
	if already {
		return
	}
	for _, obj := range c.inf.GetStore().List() {
		c.enqueuePod(obj)
	}
}

func (c *Client) enqueuePod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || !hasGate(pod, c.opts.GateCondition) {
		return
	}
	c.mu.Lock()
	synced := c.synced
	c.mu.Unlock()
	if synced {
		if key, err := cache.MetaNamespaceKeyFunc(pod); err == nil {
			c.queue.Add(key)
		}
	}
}

// process takes one pod off the queue and brings its condition in line.
func (c *Client) process(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.syncPod(ctx, key); err != nil {
		c.log.Debug("kubernetes: condition not written; retrying", zap.String("pod", key), zap.Error(err))
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// syncPod writes a pod's gate condition if it differs from the agent's verdict.
func (c *Client) syncPod(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := c.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) || (err == nil && !hasGate(pod, c.opts.GateCondition)) {
		return nil // never written to: gone, or not opted in
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	verdicts := c.desired[key]
	c.mu.Unlock()
	status, reason, message := Condition(expectedContainers(pod), verdicts)
	var current *corev1.PodCondition
	for i := range pod.Status.Conditions {
		if string(pod.Status.Conditions[i].Type) == c.opts.GateCondition {
			current = &pod.Status.Conditions[i]
		}
	}
	if current != nil && current.Status == status && current.Reason == reason && current.Message == message {
		return nil
	}
	transition := metav1.NewTime(time.Now())
	if current != nil && current.Status == status {
		transition = current.LastTransitionTime
	}
	patch, err := json.Marshal(map[string]any{
		// The UID makes the patch fail for a pod re-created under the same name.
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{"conditions": []corev1.PodCondition{{
			Type: corev1.PodConditionType(c.opts.GateCondition), Status: status, Reason: reason, Message: message,
			LastTransitionTime: transition,
		}}},
	})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = c.cs.CoreV1().Pods(ns).Patch(rctx, name, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager}, "status")
	c.setUp(err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) || apierrors.IsForbidden(err), err)
	if err != nil {
		if apierrors.IsForbidden(err) {
			c.log.Error("kubernetes: not allowed to write the readiness gate", zap.String("pod", key), zap.Error(err))
		}
		return err
	}
	c.writes.Add(1)
	level := zap.InfoLevel
	if status != corev1.ConditionTrue {
		level = zap.WarnLevel
	}
	c.log.Log(level, "readiness gate written", zap.String("pod", key), zap.String("condition", c.opts.GateCondition),
		zap.String("status", string(status)), zap.String("reason", reason), zap.String("message", message))
	return nil
}
