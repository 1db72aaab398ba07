package deploy

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const manifests = "kubernetes"

// decodeStrict decodes one Kubernetes object into its API type; unknown and
// duplicate fields are errors.
func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "v1 ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "apps/v1 DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "monitoring.coreos.com/v1 ServiceMonitor":
		obj = &monitoringv1.ServiceMonitor{}
	case "monitoring.coreos.com/v1 PrometheusRule":
		obj = &monitoringv1.PrometheusRule{}
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		obj = &rbacv1.ClusterRole{}
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		obj = &rbacv1.ClusterRoleBinding{}
	case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy":
		obj = &admissionv1.ValidatingAdmissionPolicy{}
	case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicyBinding":
		obj = &admissionv1.ValidatingAdmissionPolicyBinding{}
	default:
		return nil, fmt.Errorf("unexpected kind %q %q", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

// rendered is the kustomization built as kubectl apply -k would, every object decoded
// strictly.
func rendered(t *testing.T) []any {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), manifests)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", manifests, err)
	}
	var objs []any
	for _, r := range rm.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		objs = append(objs, obj)
	}
	return objs
}

func find[T any](t *testing.T, objs []any) T {
	t.Helper()
	var zero T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			return v
		}
	}
	t.Fatalf("no %T in the kustomization", zero)
	return zero
}

// documents splits a YAML file into its documents.
func documents(b []byte) [][]byte {
	var out [][]byte
	for _, d := range strings.Split("\n"+string(b), "\n---\n") {
		if strings.TrimSpace(d) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

// clusterScoped says which objects have no namespace.
func clusterScoped(o any) bool {
	switch o.(type) {
	case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding,
		*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding:
		return true
	}
	return false
}

func TestManifestsDecodeStrictly(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(manifests, "*.yaml"))
	objects := 1 // the dashboard ConfigMap, generated
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "kustomization.yaml" {
			var k types.Kustomization
			if err := yaml.UnmarshalStrict(b, &k); err != nil {
				t.Errorf("%s: %v", f, err)
			}
			for _, r := range k.Resources {
				if _, err := os.Stat(filepath.Join(manifests, r)); err != nil {
					t.Errorf("%s: resource %s: %v", f, r, err)
				}
			}
			if len(k.Resources) != len(files)-1 {
				t.Errorf("%s lists %d resources; the directory has %d manifests", f, len(k.Resources), len(files)-1)
			}
			continue
		}
		for _, doc := range documents(b) {
			objects++
			if _, err := decodeStrict(doc); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
	}
	objs := rendered(t)
	if len(objs) != objects {
		t.Errorf("kustomize renders %d objects; the manifests hold %d", len(objs), objects)
	}
	for _, o := range objs {
		if m, ok := o.(metav1.Object); ok && m.GetNamespace() == "" && !clusterScoped(o) {
			t.Errorf("%s has no namespace", m.GetName())
		}
	}
}

// TestDaemonSetMatchesTheAgent checks the DaemonSet's container against the agent it
// runs: its flags are the ones `probe-agent run --help` documents, every path a flag
// names is mounted from the host, and its probes hit the agent's port.
func TestDaemonSetMatchesTheAgent(t *testing.T) {
	objs := rendered(t)
	ds := find[*appsv1.DaemonSet](t, objs)
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "run" || len(c.Command) != 0 {
		t.Fatalf("command %v args %v: want the image's entrypoint with run", c.Command, c.Args)
	}
	known := runFlags(t)
	flags := map[string]string{}
	for _, a := range c.Args[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("arg %q: write flags as --name=value", a)
			continue
		}
		if !known[name] {
			t.Errorf("arg %q: probe-agent run has no flag --%s", a, name)
		}
		flags[name] = value
	}
	if flags["runtime"] != "containerd" {
		t.Errorf("--runtime=%q, want containerd", flags["runtime"])
	}

	// Every path the agent is told about comes from the host, where the agent needs it.
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mountFor := func(p string) (corev1.VolumeMount, bool) {
		for _, m := range c.VolumeMounts {
			if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
				return m, true
			}
		}
		return corev1.VolumeMount{}, false
	}
	for _, f := range []string{"containerd-address", "state-dir", "runtime-dir", "nvidia-driver-root"} {
		p, set := flags[f]
		if !set {
			if f == "nvidia-driver-root" {
				continue
			}
			t.Errorf("--%s is not set; its default would not match the mounts", f)
			continue
		}
		p = strings.TrimPrefix(p, "unix://")
		m, ok := mountFor(p)
		if !ok {
			t.Errorf("--%s=%s: nothing is mounted there", f, p)
			continue
		}
		v := volumes[m.Name]
		if v.HostPath == nil {
			t.Errorf("--%s=%s: volume %s is not a hostPath", f, p, m.Name)
			continue
		}
		if host := path.Join(v.HostPath.Path, strings.TrimPrefix(p, m.MountPath)); host != p {
			t.Errorf("--%s=%s is %s on the host; it must be the same path (containerd opens container logs under --state-dir and exec FIFOs under --runtime-dir on the host side)", f, p, host)
		}
		if (f == "state-dir" || f == "runtime-dir") && m.ReadOnly {
			t.Errorf("--%s is mounted read-only", f)
		}
		if f == "containerd-address" && (m.MountPath != path.Dir(p) || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory) {
			t.Errorf("mount the containerd socket's directory (a hostPath of type Directory at %s), not the socket: "+
				"a restarted containerd makes a new socket file that a mount of the old one never sees", path.Dir(p))
		}
	}
	for _, v := range pod.Volumes {
		used := false
		for _, m := range c.VolumeMounts {
			used = used || m.Name == v.Name
		}
		if !used {
			t.Errorf("volume %s is not mounted", v.Name)
		}
	}

	// The agent's own probes and port.
	port := strings.TrimPrefix(flags["listen"], ":")
	if port == "" || strings.Contains(port, ":") {
		t.Fatalf("--listen=%q: want :PORT so that probes and Prometheus reach the pod IP", flags["listen"])
	}
	if len(c.Ports) != 1 || fmt.Sprint(c.Ports[0].ContainerPort) != port {
		t.Errorf("ports %v, want %s", c.Ports, port)
	}
	for probe, want := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want || probe.HTTPGet.Port.String() != c.Ports[0].Name {
			t.Errorf("probe %+v, want GET %s on port %s", probe, want, c.Ports[0].Name)
		}
	}

	// Privileges: what setns and /proc need, no more.
	sc := c.SecurityContext
	if !pod.HostPID || sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"KILL", "SYS_ADMIN", "SYS_PTRACE"}) ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("hostPID %v, security context %+v", pod.HostPID, sc)
	}
	if pod.HostNetwork {
		t.Error("hostNetwork: the agent dials from each container's own network namespace")
	}

	// Scheduling and rollout.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v", c.Resources)
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil || ru.MaxUnavailable == nil {
		t.Errorf("update strategy %+v", ds.Spec.UpdateStrategy)
	}
	if pod.NodeSelector["nvidia.com/gpu.present"] != "true" || len(pod.Tolerations) == 0 || pod.Tolerations[0].Key != "nvidia.com/gpu" {
		t.Errorf("node selector %v, tolerations %v: want GPU nodes", pod.NodeSelector, pod.Tolerations)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if (pod.RuntimeClassName == nil || *pod.RuntimeClassName != "nvidia" || env["NVIDIA_VISIBLE_DEVICES"] != "all") && flags["nvidia-driver-root"] == "" {
		t.Error("no way to NVML: neither the nvidia runtime class with NVIDIA_VISIBLE_DEVICES=all nor --nvidia-driver-root")
	}

	// The Service and ServiceMonitor find the pods and the port.
	svc := find[*corev1.Service](t, objs)
	sm := find[*monitoringv1.ServiceMonitor](t, objs)
	labels := ds.Spec.Template.Labels
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("service selector %v does not select the pods %v", svc.Spec.Selector, labels)
		}
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("service %+v: want headless on the metrics port", svc.Spec)
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("service monitor selector %v does not select the service %v", sm.Spec.Selector.MatchLabels, svc.Labels)
		}
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("service monitor endpoints %+v", sm.Spec.Endpoints)
	}
}
