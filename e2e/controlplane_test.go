package e2e

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	kubeapiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"k8s.io/kubernetes/pkg/controller/endpointslice"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/internal/testsock"
)

// controlPlane is etcd, a kube-apiserver with Node,RBAC authorization and
// NodeRestriction, the agent's RBAC and admission policy as shipped, two nodes, and the
// EndpointSlice controller.
type controlPlane struct {
	admin  *rest.Config
	client kubernetes.Interface
	// servingCert is the API server's self-signed serving certificate (PEM): what
	// clients outside the test process, kubelet and pods, trust.
	servingCert []byte
}

// The agent's identity, as deploy/kubernetes makes it.
const (
	agentNamespace = "probe-agent"
	agentAccount   = "probe-agent"
)

func startEtcd(t *testing.T) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	client, _ := url.Parse("http://" + testsock.FreeAddr(t))
	peer, _ := url.Parse("http://" + testsock.FreeAddr(t))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not start")
	}
	return client.String()
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	return startControlPlaneWith(t, nil, "node-1", "node-2")
}

// startControlPlaneWith starts a control plane with extra kube-apiserver flags and
// creates the named Node objects (a real kubelet registers its own).
func startControlPlaneWith(t *testing.T, flags []string, nodes ...string) *controlPlane {
	t.Helper()
	etcd := startEtcd(t)
	server := kubeapiservertesting.StartTestServerOrDie(t, nil,
		append([]string{"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction"}, flags...),
		&storagebackend.Config{Type: "etcd3", Prefix: "/registry", Transport: storagebackend.TransportConfig{ServerList: []string{etcd}}})
	t.Cleanup(server.TearDownFn)
	cp := &controlPlane{admin: server.ClientConfig}
	cp.client = kubernetes.NewForConfigOrDie(cp.admin)
	cert, err := os.ReadFile(filepath.Join(server.TmpDir, "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cp.servingCert = cert
	ctx := context.Background()
	for _, n := range nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}
		if _, err := cp.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cp.apply(t, "namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "admissionpolicy.yaml")
	cp.startEndpointSlices(t)
	return cp
}

// namespace creates a namespace with its default ServiceAccount, which no
// controller-manager makes here.
func (cp *controlPlane) namespace(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cp.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := cp.client.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// apply creates the shipped manifests, namespaced ones in the agent's namespace, as
// kustomize would.
func (cp *controlPlane) apply(t *testing.T, files ...string) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	resources := map[string]schema.GroupVersionResource{
		"Namespace":                        {Version: "v1", Resource: "namespaces"},
		"ServiceAccount":                   {Version: "v1", Resource: "serviceaccounts"},
		"ClusterRole":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"ValidatingAdmissionPolicy":        {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"},
		"ValidatingAdmissionPolicyBinding": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"},
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", f))
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(data)), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); err != nil {
				break
			}
			if obj.Object == nil {
				continue
			}
			gvr, ok := resources[obj.GetKind()]
			if !ok {
				t.Fatalf("%s: no resource for %s", f, obj.GetKind())
			}
			var ri dynamic.ResourceInterface = dyn.Resource(gvr)
			if obj.GetKind() == "ServiceAccount" {
				ri = dyn.Resource(gvr).Namespace(agentNamespace)
			}
			if obj.GetKind() == "Namespace" {
				obj.SetName(agentNamespace)
			}
			if _, err := ri.Create(context.Background(), &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("%s: %s %s: %v", f, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}

func (cp *controlPlane) startEndpointSlices(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(cp.client, 0)
	c := endpointslice.NewController(ctx, factory.Core().V1().Pods(), factory.Core().V1().Services(),
		factory.Core().V1().Nodes(), factory.Discovery().V1().EndpointSlices(), 100, cp.client, 0)
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, 1) }()
	t.Cleanup(func() { cancel(); <-done; factory.Shutdown() })
}

// agentConfig is a client configuration authenticated as the agent's ServiceAccount,
// with a token bound to a pod of the DaemonSet on node: the token carries the node's
// name, which the admission policy checks.
func (cp *controlPlane) agentConfig(t *testing.T, node string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "probe-agent-" + node, Namespace: agentNamespace},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: agentAccount, AutomountServiceAccountToken: new(false),
			Containers: []corev1.Container{{Name: "probe-agent", Image: "probe-agent"}}}}
	pod, err := cp.client.CoreV1().Pods(agentNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err != nil {
		pod, _ = cp.client.CoreV1().Pods(agentNamespace).Get(ctx, "probe-agent-"+node, metav1.GetOptions{})
	}
	tr, err := cp.client.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, agentAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1",
			Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(cp.admin)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

// waitForPolicy waits until the admission policy denies a status write by the agent on
// another node's pod: policies take effect shortly after they are created.
func (cp *controlPlane) waitForPolicy(t *testing.T, agent kubernetes.Interface, otherNodesPod *corev1.Pod) {
	t.Helper()
	patch := []byte(`{"status":{"conditions":[{"type":"probe-agent.io/ready","status":"True"}]}}`)
	await.Until(t, 30*time.Second, "the admission policy in force", func() bool {
		_, err := agent.CoreV1().Pods(otherNodesPod.Namespace).Patch(context.Background(), otherNodesPod.Name,
			"application/strategic-merge-patch+json", patch, metav1.PatchOptions{}, "status")
		return apierrors.IsForbidden(err) || apierrors.IsInvalid(err)
	})
}
