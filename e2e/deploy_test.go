package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// deployAgent renders deploy/kubernetes as `kubectl apply -k` would, with the image set
// to the one the test built (as `kustomize edit set image` does), and creates every
// object but the Prometheus operator's, whose CRDs this cluster does not have. It
// returns the DaemonSet; no DaemonSet controller runs here, so agentPod plays its part.
func deployAgent(t *testing.T, cp *controlPlane) *appsv1.DaemonSet {
	t.Helper()
	base, err := filepath.Abs(filepath.Join("..", "deploy", "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, base) // kustomize takes relative paths only
	if err != nil {
		t.Fatal(err)
	}
	ref, tag, _ := strings.Cut(agentImage, ":")
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [`+rel+`]
images:
  - name: registry.example.com/probe-agent/probe-agent
    newName: `+ref+`
    newTag: "`+tag+`"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := krusty.MakeDefaultOptions()
	opts.LoadRestrictions = 0 // the base lies outside the overlay
	rm, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), overlay)
	if err != nil {
		t.Fatalf("kustomize build: %v", err)
	}
	dc := memory.NewMemCacheClient(cp.client.Discovery())
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(dc)
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	var ds appsv1.DaemonSet
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{Object: m}
		gvk := obj.GroupVersionKind()
		if gvk.Group == "monitoring.coreos.com" {
			continue
		}
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		// As kubectl does: a namespace on a cluster-scoped object is dropped (kustomize
		// sets one on every kind it does not know to be cluster-scoped).
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		} else {
			obj.SetNamespace("")
		}
		created, err := ri.Create(context.Background(), obj, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("creating %s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		if gvk.Kind == "DaemonSet" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(created.Object, &ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ds.Name == "" {
		t.Fatal("the kustomization has no DaemonSet")
	}
	return &ds
}

// agentPod creates the DaemonSet's pod on node, as the DaemonSet controller would:
// from its template, owned by it, bound to the node.
func agentPod(t *testing.T, cp *controlPlane, ds *appsv1.DaemonSet) *corev1.Pod {
	t.Helper()
	tpl := ds.Spec.Template
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: ds.Name + "-", Namespace: ds.Namespace, Labels: tpl.Labels,
			Annotations: tpl.Annotations, OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(ds,
				appsv1.SchemeGroupVersion.WithKind("DaemonSet"))}},
		Spec: *tpl.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = nodeName
	pod, err := cp.client.CoreV1().Pods(ds.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}
