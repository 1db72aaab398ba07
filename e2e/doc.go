// Package e2e holds the end-to-end tests: the agent against a real kube-apiserver
// (embedded etcd, RBAC and the shipped admission policy, the EndpointSlice controller),
// with its containers on a private containerd driven through CRI.
package e2e
