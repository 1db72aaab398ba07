package containerd

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"

	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
)

// When containerd dies between reading a container and asking for its task, the
// runtime must not conclude that the task exited: it reports nothing and keeps the
// container, and the next reconcile decides.
func TestObserveConcludesNothingWhenContainerdCannotSay(t *testing.T) {
	ctrdtest.Require(t)
	d := ctrdtest.Start(t)
	client := d.Client(t)
	ctrdtest.RunContainer(t, client, "default", "web", ctrdtest.Rootfs(t),
		map[string]string{LabelChecks: `{"liveness_check":{"exec":{"command":["true"]}}}`}, "sleep", "600")
	r, err := New(Options{Address: d.Address, StateDir: t.TempDir(), RuntimeDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan runtime.Event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx, events); close(done) }()
	defer func() { cancel(); <-done }()
	for running := false; !running; {
		select {
		case ev := <-events:
			running = ev.Name == "web" && ev.Instance != ""
		case <-time.After(10 * time.Second):
			t.Fatal("the container was never reported running")
		}
	}

	nctx := namespaces.WithNamespace(context.Background(), "default")
	c, err := client.LoadContainer(nctx, "web") // its metadata is cached from here on
	if err != nil {
		t.Fatal(err)
	}
	d.Kill()
	name, err := r.observe(nctx, client, "default", c, false, 0)
	if err == nil || name != "" {
		t.Fatalf("observe with containerd down: %q, %v; want an error", name, err)
	}
	select {
	case ev := <-events:
		t.Fatalf("event %s for %s while containerd could not say anything", ev.Type, ev.Name)
	case <-time.After(300 * time.Millisecond):
	}
	r.mu.Lock()
	e := r.entries["web"]
	r.mu.Unlock()
	if e == nil || !e.running {
		t.Fatalf("the container was forgotten or marked stopped: %+v", e)
	}
}

// A pod's checks and network come from its sandbox. A sandbox that is gone means no
// checks; containerd failing to answer must come back as an error, never as "no
// checks", which would unregister the container's probes at the next reconcile.
func TestSandboxDoesNotTakeAnErrorForNone(t *testing.T) {
	ctrdtest.Require(t)
	d := ctrdtest.Start(t)
	client := d.Client(t)
	nctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	sb, err := loadSandbox(nctx, client, "no-such-sandbox")
	if sb != nil || err != nil {
		t.Fatalf("a sandbox that is gone: %v, %v; want none and no error", sb, err)
	}
	d.Kill()
	sb, err = loadSandbox(nctx, client, "some-sandbox")
	if err == nil || sb != nil {
		t.Fatalf("containerd down: %v, %v; want an error", sb, err)
	}
}
