package deploy

import (
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/probe-agent/probe-agent/kube"
)

// TestLeastPrivilege checks what the agent's ServiceAccount may do: exactly what the
// agent's Kubernetes side uses, kept to its own node and conditions by the admission
// policy, which must name the ServiceAccount and the condition types the agent writes.
func TestLeastPrivilege(t *testing.T) {
	objs := rendered(t)
	sa := find[*corev1.ServiceAccount](t, objs)
	ds := find[*appsv1.DaemonSet](t, objs)
	role := find[*rbacv1.ClusterRole](t, objs)
	binding := find[*rbacv1.ClusterRoleBinding](t, objs)
	policy := find[*admissionv1.ValidatingAdmissionPolicy](t, objs)
	policyBinding := find[*admissionv1.ValidatingAdmissionPolicyBinding](t, objs)

	var got []string
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, g+"/"+res+":"+v)
				}
			}
		}
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", r)
		}
	}
	want := []string{"/pods:get", "/pods:list", "/pods:watch", "/pods/status:patch", "/nodes:get", "/nodes/status:patch",
		"events.k8s.io/events:create", "events.k8s.io/events:patch"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole grants %v, want exactly %v", got, want)
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Kind != "ServiceAccount" ||
		binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("ClusterRoleBinding %+v does not bind %s to %s/%s", binding, role.Name, sa.Namespace, sa.Name)
	}
	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != sa.Name || pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken ||
		sa.AutomountServiceAccountToken == nil || !*sa.AutomountServiceAccountToken {
		t.Error("the DaemonSet must run as the ServiceAccount with its token mounted")
	}
	nodeName := false
	for _, e := range pod.Containers[0].Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil &&
			e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("NODE_NAME must come from the downward API (spec.nodeName): the agent watches and writes only its node")
	}

	user := "system:serviceaccount:" + sa.Namespace + ":" + sa.Name
	if len(policy.Spec.MatchConditions) != 1 || !strings.Contains(policy.Spec.MatchConditions[0].Expression, "'"+user+"'") {
		t.Errorf("the admission policy must match the agent's ServiceAccount %s: %+v", user, policy.Spec.MatchConditions)
	}
	all := ""
	for _, v := range policy.Spec.Variables {
		all += v.Expression + "\n"
	}
	for _, c := range []string{kube.DefaultGateCondition, kube.DefaultGPUCondition} {
		if !strings.Contains(all, "'"+c+"'") {
			t.Errorf("the admission policy does not name the agent's condition %s", c)
		}
	}
	if policy.Spec.FailurePolicy == nil || *policy.Spec.FailurePolicy != admissionv1.Fail {
		t.Error("the admission policy must fail closed")
	}
	if policyBinding.Spec.PolicyName != policy.Name || !slices.Contains(policyBinding.Spec.ValidationActions, admissionv1.Deny) {
		t.Errorf("the policy binding %+v does not deny through %s", policyBinding.Spec, policy.Name)
	}
}
