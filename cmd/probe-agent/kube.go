package main

import (
	"os"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/kube"
	"github.com/probe-agent/probe-agent/metrics"
)

// kubeFlags are the flags of the Kubernetes side.
type kubeFlags struct {
	mode, kubeconfig, nodeName, gate, gpuCondition string
}

func (k *kubeFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&k.mode, "kubernetes", "auto", "write readiness gates, events and the node's GPU condition to the API server: auto (when running in a cluster or given --kubeconfig), on or off")
	fl.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig to reach the API server with (default: the in-cluster service account)")
	fl.StringVar(&k.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name; only its pods are watched (default $NODE_NAME, from the downward API)")
	fl.StringVar(&k.gate, "readiness-gate-condition", kube.DefaultGateCondition, "the pod condition the agent owns in pods whose readinessGates list it")
	fl.StringVar(&k.gpuCondition, "gpu-node-condition", kube.DefaultGPUCondition, "the node condition that carries GPU health")
}

// client returns the Kubernetes client the flags ask for, or nil when it is off.
func (k *kubeFlags) client(log *zap.Logger, m *metrics.Metrics) (*kube.Client, error) {
	cfg, err := kube.Config(k.mode, k.kubeconfig)
	if err != nil || cfg == nil {
		if err == nil && k.mode == "auto" {
			log.Info("kubernetes: not in a cluster and no --kubeconfig; readiness gates and events are off")
		}
		return nil, err
	}
	m.EnableKubernetes()
	return kube.New(kube.Options{Config: cfg, NodeName: k.nodeName, GateCondition: k.gate, GPUCondition: k.gpuCondition,
		Logger: log, OnUp: m.KubernetesUp})
}
