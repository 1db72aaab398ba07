package service

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

// Use says what the agent does with a field of service.json.
type Use int

const (
	// Used: an EAS field the agent reads.
	Used Use = iota
	// Ignored: an EAS platform field (resources, storage, networking, scaling, the
	// processor); accepted and type-checked as EAS documents it, not used.
	Ignored
	// Extension: probe-agent's own field, not part of EAS.
	Extension
)

func (u Use) String() string {
	return [...]string{"used", "ignored (EAS platform field)", "extension"}[u]
}

// Field is one entry of the service.json schema.
type Field struct {
	// Path is the field's JSON path; "[]" stands for any array index and <check> for
	// liveness_check, readiness_check and startup_check.
	Path string
	// Type is string, integer, number, boolean, object or array, or alternatives
	// joined by '|'.
	Type string
	Use  Use
	// Open marks an object whose members are not all written down here: members it
	// does not list are accepted as they are. Every other object's unlisted members
	// are errors.
	Open bool
	Doc  string
}

// checkPrefix stands for the three check fields of a container entry in Schema.
const checkPrefix = "containers[].<check>"

// Schema is every field of service.json that the agent knows: the fields of EAS's
// "Deploy services with JSON configuration files" reference and its health-check
// document (metadata, cloud, containers, storage, networking, autoscaler, runtime,
// features, and the processor-style top-level fields), and probe-agent's extensions.
var Schema = []Field{
	{"metadata", "object", Used, false, "service metadata"},
	{"metadata.name", "string", Used, false, "service name; containers default to <name>-<index>"},
	{"metadata.instance", "integer", Ignored, false, "number of instances"},
	{"metadata.workspace_id", "string", Ignored, false, "PAI workspace"},
	{"metadata.cpu", "number", Ignored, false, "CPU cores per instance"},
	{"metadata.memory", "integer", Ignored, false, "memory per instance, MB"},
	{"metadata.gpu", "integer", Ignored, false, "GPUs per instance"},
	{"metadata.gpu_memory", "integer", Ignored, false, "GPU memory per instance, GB"},
	{"metadata.gpu_core_percentage", "integer", Ignored, false, "share of a GPU's compute"},
	{"metadata.qos", "string", Ignored, false, "quality-of-service class"},
	{"metadata.resource", "string", Ignored, false, "dedicated resource group"},
	{"metadata.resource_burstable", "boolean", Ignored, false, "elastic resource pool"},
	{"metadata.disk", "string", Ignored, false, "system disk size"},
	{"metadata.shm_size", "integer", Ignored, false, "shared memory size"},
	{"metadata.rdma", "integer", Ignored, false, "RDMA network cards"},
	{"metadata.cuda", "string", Ignored, false, "CUDA version of the processor"},
	{"metadata.enable_grpc", "boolean", Ignored, false, "gRPC on the service gateway"},
	{"metadata.enable_webservice", "boolean", Ignored, false, "web UI service"},
	{"metadata.type", "string", Ignored, false, "service type"},
	{"metadata.group", "string", Ignored, false, "service group"},
	{"metadata.role", "string", Ignored, false, "role in a service group"},
	{"metadata.workload_type", "string", Ignored, false, "workload type (e.g. elasticjob)"},
	{"metadata.rpc", "object", Ignored, true, "serving engine settings (batching, keepalive, queue sizes, threads)"},
	{"metadata.rolling_strategy", "object", Ignored, true, "rolling update (max_surge, max_unavailable)"},
	{"metadata.eas", "object", Ignored, true, "advanced EAS settings"},
	{"metadata.scheduling", "object", Ignored, true, "scheduling (spread)"},

	{"name", "string", Used, false, "service name of a processor-style file; used when metadata.name is absent"},
	{"token", "string", Ignored, false, "service token"},
	{"model_path", "string", Ignored, false, "model package (processor-style)"},
	{"model_entry", "string", Ignored, false, "model entry file (processor-style)"},
	{"model_config", "string|object", Ignored, false, "model configuration (processor-style)"},
	{"oss_endpoint", "string", Ignored, false, "OSS endpoint for model and processor packages"},
	{"processor", "string", Ignored, false, "built-in processor"},
	{"processor_path", "string", Ignored, false, "custom processor package"},
	{"processor_entry", "string", Ignored, false, "custom processor entry file"},
	{"processor_mainclass", "string", Ignored, false, "custom Java processor main class"},
	{"processor_type", "string", Ignored, false, "custom processor language"},
	{"warm_up_data_path", "string", Ignored, false, "warm-up request file"},
	{"dockerAuth", "string", Ignored, false, "registry credentials"},

	{"cloud", "object", Ignored, false, "public resource group"},
	{"cloud.computing", "object", Ignored, false, "instance types"},
	{"cloud.computing.instance_type", "string", Ignored, false, "instance type"},
	{"cloud.computing.instances", "array", Ignored, false, "instance types, in order of preference"},
	{"cloud.computing.instances[]", "object", Ignored, true, "one instance type"},
	{"cloud.computing.instances[].type", "string", Ignored, false, "instance type"},
	{"cloud.computing.instances[].spot_price_limit", "number", Ignored, false, "spot price limit"},
	{"cloud.computing.disable_spot_protection_period", "boolean", Ignored, false, "spot instances without a protection period"},
	{"cloud.networking", "object", Ignored, true, "VPC"},
	{"cloud.networking.vpc_id", "string", Ignored, false, "VPC"},
	{"cloud.networking.vswitch_id", "string", Ignored, false, "vSwitch"},
	{"cloud.networking.security_group_id", "string", Ignored, false, "security group"},

	{"storage", "array", Ignored, false, "mounts (OSS, NAS, Git, images, empty dirs)"},
	{"storage[]", "object", Ignored, true, "one mount"},
	{"storage[].mount_path", "string", Ignored, false, "path in the container"},
	{"networking", "object", Ignored, true, "service invocation (gateway, traffic)"},
	{"autoscaler", "object", Ignored, true, "horizontal auto scaling"},
	{"runtime", "object", Ignored, true, "runtime settings"},
	{"features", "object", Ignored, true, "feature switches"},

	{"containers", "array", Used, false, "containers, each with its checks"},
	{"containers[]", "object", Used, false, "one container"},
	{"containers[].name", "string", Extension, false, "container name (default <metadata.name>-<index>); on containerd, the ID of a container someone else runs"},
	{"containers[].image", "string", Used, false, "image the containerd runtime creates the container from (from containerd's image store: nothing is pulled)"},
	{"containers[].rootfs", "string", Extension, false, "root filesystem directory the containerd runtime creates the container from"},
	{"containers[].command", "string", Used, false, "entry command, split into words and run without a shell"},
	{"containers[].script", "string", Used, false, "entry script, run with /bin/sh -c; instead of command"},
	{"containers[].port", "integer", Used, false, "the container's port; checks default to it"},
	{"containers[].env", "array", Used, false, "environment variables"},
	{"containers[].env[]", "object", Used, false, "one variable"},
	{"containers[].env[].name", "string", Used, false, "variable name"},
	{"containers[].env[].value", "string", Used, false, "variable value"},
	{"containers[].restart_policy", "string", Extension, false, "Always (default), OnFailure or Never"},
	{"containers[].exec_runner", "boolean", Extension, false, "false: exec checks go through containerd exec, one runc exec per probe, instead of the agent's runner in the container"},
	{"containers[].prepare", "object", Ignored, true, "Python packages installed before start"},
	{"containers[].prepare.pythonRequirements", "array", Ignored, false, "Python packages"},
	{"containers[].prepare.pythonRequirementsPath", "string", Ignored, false, "requirements file"},

	{checkPrefix, "object", Used, false, "liveness, readiness or startup check"},
	{checkPrefix + ".http_get", "object", Used, false, "HTTP GET; a status in 200-399 is success"},
	{checkPrefix + ".http_get.path", "string", Used, false, "request path (default /)"},
	{checkPrefix + ".http_get.port", "integer", Used, false, "port (default the container's)"},
	{checkPrefix + ".http_get.host", "string", Extension, false, "host to connect to, as in Kubernetes (default the container's IP)"},
	{checkPrefix + ".http_get.scheme", "string", Extension, false, "HTTP or HTTPS, as in Kubernetes"},
	{checkPrefix + ".http_get.http_headers", "array", Extension, false, "request headers, as in Kubernetes"},
	{checkPrefix + ".http_get.http_headers[]", "object", Extension, false, "one header"},
	{checkPrefix + ".http_get.http_headers[].name", "string", Extension, false, "header name"},
	{checkPrefix + ".http_get.http_headers[].value", "string", Extension, false, "header value; empty removes a default header"},
	{checkPrefix + ".tcp_socket", "object", Used, false, "TCP connect"},
	{checkPrefix + ".tcp_socket.port", "integer", Used, false, "port (default the container's)"},
	{checkPrefix + ".tcp_socket.host", "string", Extension, false, "host to connect to, as in Kubernetes"},
	{checkPrefix + ".exec", "object", Used, false, "command run in the container; exit code 0 is success"},
	{checkPrefix + ".exec.command", "array", Used, false, "argv, run without a shell"},
	{checkPrefix + ".grpc", "object", Extension, false, "grpc.health.v1 Check, as in Kubernetes; SERVING is success"},
	{checkPrefix + ".grpc.port", "integer", Extension, false, "port (default the container's)"},
	{checkPrefix + ".grpc.host", "string", Extension, false, "host to connect to"},
	{checkPrefix + ".grpc.service", "string", Extension, false, "service name sent in the request"},
	{checkPrefix + ".initial_delay_seconds", "number", Used, false, "delay after the container starts (default 0)"},
	{checkPrefix + ".period_seconds", "number", Used, false, "interval (default 10)"},
	{checkPrefix + ".timeout_seconds", "number", Used, false, "timeout (default 1)"},
	{checkPrefix + ".success_threshold", "integer", Used, false, "consecutive successes to pass (default 1)"},
	{checkPrefix + ".failure_threshold", "integer", Used, false, "consecutive failures to fail"},
	{checkPrefix + ".termination_grace_period_seconds", "number", Extension, false, "grace period when this check's failure stops the container (liveness and startup)"},
}

// schema is Schema keyed by path, with <check> expanded.
var schema = func() map[string]*Field {
	m := make(map[string]*Field, len(Schema)+2*16)
	for i := range Schema {
		f := &Schema[i]
		if rest, ok := strings.CutPrefix(f.Path, checkPrefix); ok {
			for _, t := range ProbeTypes {
				m["containers[]."+t.Field()+rest] = f
			}
			continue
		}
		m[f.Path] = f
	}
	return m
}()

// lookup returns the schema entry at a path pattern, or nil.
func lookup(pattern string) *Field { return schema[pattern] }

// childPattern is the pattern of member key of the object at pattern parent.
func childPattern(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// suggest returns the member of the object at pattern parent whose name is closest to
// key, if one is close enough to be a misspelling of it.
func suggest(parent, key string) string {
	prefix := childPattern(parent, "")
	best, bestDist := "", 0
	var names []string
	for p := range schema {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok || rest == "" || strings.ContainsAny(rest, ".[") {
			continue
		}
		names = append(names, rest)
	}
	slices.Sort(names) // ties go to the first name, whatever the map's order
	for _, name := range names {
		d := editDistance(strings.ToLower(key), strings.ToLower(name))
		if d <= max(1, len(name)/4) && (best == "" || d < bestDist) {
			best, bestDist = name, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b: insertions,
// deletions, substitutions and transpositions of adjacent bytes each cost 1.
func editDistance(a, b string) int {
	if len(a) > 2*maxEcho || len(b) > 2*maxEcho {
		return max(len(a), len(b)) // too long to be a misspelling of a field name
	}
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// hasType reports whether n is of the schema type typ (alternatives joined by '|'); the
// schema's type names are the JSON kinds' names, plus integer.
func hasType(n *node, typ string) bool {
	for _, t := range strings.Split(typ, "|") {
		if t == n.kind.String() || t == "integer" && n.kind == kindNumber && isInteger(n.num.String()) {
			return true
		}
	}
	return false
}

// isInteger reports whether a JSON number has no fraction (1, -3, 2e3, 4.0), as the
// decoder reads integers.
func isInteger(num string) bool {
	f, err := strconv.ParseFloat(num, 64)
	return err == nil && !math.IsInf(f, 0) && f == math.Trunc(f)
}
