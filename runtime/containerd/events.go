package containerd

import (
	"context"
	"time"

	"github.com/containerd/containerd"
	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/typeurl/v2"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/runtime"
)

// handle applies one event.
func (r *Runtime) handle(ctx context.Context, client *containerd.Client, env *events.Envelope) {
	if !r.watched(env.Namespace) {
		return
	}
	ev, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		return
	}
	nctx := namespaces.WithNamespace(ctx, env.Namespace)
	load := func(id string, code int) {
		c, err := client.LoadContainer(nctx, id)
		if err == nil {
			if _, err := r.observe(nctx, client, env.Namespace, c, false, code); err != nil {
				r.log.Debug("cannot follow event; the next reconcile will", zap.String("id", id), zap.Error(err))
			}
		}
	}
	switch x := ev.(type) {
	case *apievents.TaskStart:
		load(x.ContainerID, 0)
	case *apievents.TaskExit:
		// Exits of execs (probes included) carry the exec's ID; only the init
		// process's exit means the container stopped.
		if x.ID != x.ContainerID {
			return
		}
		var evs []runtime.Event
		r.mu.Lock()
		if name, ok := r.ids[env.Namespace+"/"+x.ContainerID]; ok {
			if e := r.entries[name]; e != nil && e.running && e.id == x.ContainerID && e.pid == int(x.Pid) {
				e.running = false
				evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Instance: e.inst,
					Time: x.ExitedAt.AsTime(), ExitCode: int(x.ExitStatus)})
			}
		}
		r.mu.Unlock()
		r.send(evs)
	case *apievents.TaskOOM:
		r.log.Info("out of memory in container", zap.String("namespace", env.Namespace), zap.String("id", x.ContainerID))
	case *apievents.ContainerCreate:
		load(x.ID, 0)
	case *apievents.ContainerUpdate:
		c, err := client.LoadContainer(nctx, x.ID)
		if err != nil {
			return
		}
		if name, err := r.observe(nctx, client, env.Namespace, c, false, 0); err == nil && name == "" {
			r.forget(env.Namespace, x.ID)
		}
	case *apievents.ContainerDelete:
		r.forget(env.Namespace, x.ID)
	}
}

// forget removes a container that was deleted or lost its checks. A Kubernetes
// container replaced by a newer instance under the same name is only unlinked. A
// container of the agent's own service.json is never forgotten (see deleted).
func (r *Runtime) forget(ns, id string) {
	var evs []runtime.Event
	r.mu.Lock()
	if name, ok := r.ids[ns+"/"+id]; ok {
		delete(r.ids, ns+"/"+id)
		if e := r.entries[name]; e != nil && e.id == id && e.ns == ns {
			if cfg := r.config[name]; cfg != nil && cfg.CreatedByAgent() {
				evs = r.deleted(name, e)
			} else {
				evs = r.remove(name, e)
			}
		}
	}
	r.mu.Unlock()
	r.send(evs)
}

// deleted handles a container of the agent's service.json deleted behind its back: the
// agent owns it, so it stays known, its instance ends with the reason "deleted", and
// the agent creates it again per its restart policy (Start creates a container that
// does not exist). Called with r.mu held.
func (r *Runtime) deleted(name string, e *entry) []runtime.Event {
	r.log.Warn("container deleted outside the agent; it is created again per its restart policy",
		zap.String("container", name), zap.String("namespace", e.ns), zap.String("id", e.id))
	e.running = false
	return []runtime.Event{{Type: runtime.Exited, Name: name, Instance: e.inst, Time: time.Now(), ExitCode: -1, Reason: "deleted"}}
}
