package containerd

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/containerd/typeurl/v2"

	"github.com/probe-agent/probe-agent/runtime"
)

func sandboxExts(t *testing.T, annotation string) map[string]typeurl.Any {
	t.Helper()
	var md sandboxMetadata
	md.Metadata.Config.Annotations = map[string]string{AnnotationChecks: annotation}
	data, err := json.Marshal(md)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]typeurl.Any{sandboxMetadataExt: ext(data)}
}

// ext is an extension's value as containerd hands it over.
type ext []byte

func (e ext) GetTypeUrl() string { return "sandbox" }
func (e ext) GetValue() []byte   { return e }

// TestPodAnnotationParsedOncePerValue: every containerd event of a pod's containers
// reads its annotation again; an unchanged annotation is parsed once.
func TestPodAnnotationParsedOncePerValue(t *testing.T) {
	r, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := runtime.Identity{Name: "ns/web/app", Namespace: "ns", Pod: "web", Container: "app"}
	ann := `{"app":{"readiness_check":{"tcp_socket":{"port":8000}}},"side":{"liveness_check":{"exec":{"command":["true"]}}}}`
	first, err := r.podAnnotationChecks(sandboxExts(t, ann), id, r.opts.ServiceOptions)
	if first == nil || err != nil {
		t.Fatalf("%v %v", first, err)
	}
	side := id
	side.Container = "side"
	for range 10 {
		c, _ := r.podAnnotationChecks(sandboxExts(t, ann), id, r.opts.ServiceOptions)
		if c == first || !reflect.DeepEqual(c, first) {
			t.Fatal("a cached entry must be returned as an equal copy")
		}
		if s, _ := r.podAnnotationChecks(sandboxExts(t, ann), side, r.opts.ServiceOptions); s == nil || s.LivenessCheck == nil {
			t.Fatalf("the other container's entry: %+v", s)
		}
	}
	if r.parsed.misses != 1 || r.parsed.hits != 20 {
		t.Fatalf("%d parses, %d cache hits for one annotation read 21 times", r.parsed.misses, r.parsed.hits)
	}
	if _, checksErr := r.podAnnotationChecks(sandboxExts(t, `{"app":{"readiness_check":{}}}`), id, r.opts.ServiceOptions); checksErr == nil || r.parsed.misses != 2 {
		t.Fatalf("a changed annotation: %v, %d parses", checksErr, r.parsed.misses)
	}
}
