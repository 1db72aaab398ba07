package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// reconcile lists every container and brings the known state in line: new ones are
// added, changed instances reported, vanished ones removed.
func (r *Runtime) reconcile(ctx context.Context, client *containerd.Client, adopting bool) error {
	nss := r.opts.Namespaces
	if len(nss) == 0 {
		var err error
		if nss, err = client.NamespaceService().List(ctx); err != nil {
			return fmt.Errorf("listing namespaces: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ctrs, err := client.Containers(nctx)
		if err != nil {
			return fmt.Errorf("listing containers in %s: %w", ns, err)
		}
		for _, c := range ctrs {
			name, err := r.observe(nctx, client, ns, c, adopting, 0)
			if err != nil {
				return err // keep what is known; the next session reconciles again
			}
			if name != "" {
				seen[name] = true
			}
		}
	}
	var evs []runtime.Event
	r.mu.Lock()
	for name, e := range r.entries {
		if cfg := r.config[name]; cfg != nil && cfg.CreatedByAgent() {
			continue // the agent's own: known from its service.json even before it exists
		}
		if !seen[name] {
			evs = append(evs, r.remove(name, e)...)
		}
	}
	r.mu.Unlock()
	r.send(evs)
	return nil
}

// remove forgets an entry; called with r.mu held.
func (r *Runtime) remove(name string, e *entry) []runtime.Event {
	delete(r.entries, name)
	delete(r.ids, e.ns+"/"+e.id)
	delete(r.runnerNotes, name)
	var evs []runtime.Event
	if e.running {
		evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Instance: e.inst, Time: time.Now(), ExitCode: -1})
	}
	return append(evs, runtime.Event{Type: runtime.Removed, Name: name, Time: time.Now()})
}

// observe looks at one container and reports what changed about it. exitCode, when
// the caller knows the task just exited, is the code to report. It returns the
// container's name, or "" when it has no checks (or is gone). An error means
// containerd could not be asked; then nothing is reported and nothing is forgotten.
func (r *Runtime) observe(nctx context.Context, client *containerd.Client, ns string, c containerd.Container, adopting bool, exitCode int) (string, error) {
	d, err := r.describe(nctx, client, ns, c)
	var bad *badSpecError
	switch {
	case errors.As(err, &bad):
		r.log.Warn("cannot inspect container", zap.String("namespace", ns), zap.String("id", c.ID()), zap.Error(err))
		return "", nil
	case errdefs.IsNotFound(err):
		return "", nil
	case err != nil:
		return "", err
	case d == nil:
		return "", nil
	}
	ts, err := taskState(nctx, c)
	if err != nil {
		return "", fmt.Errorf("container %s/%s: task: %w", ns, c.ID(), err)
	}
	if exitCode != 0 {
		ts.code = exitCode
	}
	r.mu.Lock()
	evs := r.apply(ns, d, ts, adopting)
	r.mu.Unlock()
	r.send(evs)
	return d.c.Name, nil
}

// apply brings the entry of a described container in line with what containerd said
// and returns the events that tell the agent; called with r.mu held.
func (r *Runtime) apply(ns string, d *description, ts taskStatus, adopting bool) []runtime.Event {
	name := d.c.Name
	var evs []runtime.Event
	e := r.entries[name]
	if e == nil || !sameContainer(e.c, d.c) {
		if e == nil {
			e = &entry{}
			r.entries[name] = e
		}
		cc := d.c
		evs = append(evs, runtime.Event{Type: runtime.Added, Name: name, Time: time.Now(), Container: &cc})
	}
	if e.id != "" && e.id != d.id {
		delete(r.ids, e.ns+"/"+e.id)
	}
	e.c, e.ns, e.id, e.process, e.hostNet = d.c, ns, d.id, d.process, d.hostNet
	r.ids[ns+"/"+d.id] = name
	switch {
	case ts.running:
		inst := ns + "/" + d.id + ":" + strconv.Itoa(ts.pid)
		if inst != e.inst || !e.running {
			evs = r.started(evs, e, d, ts.pid, inst, adopting)
		}
	case e.running:
		e.running = false
		evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Instance: e.inst, Time: ts.exitedAt, ExitCode: ts.code})
	case adopting && ts.exitedAt.After(time.Time{}) && d.c.Owned:
		// Found stopped at start: report the exit so that the restart policy applies.
		evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Time: ts.exitedAt, ExitCode: ts.code})
	}
	return evs
}

// started records a new running instance: the old one, if any, exited, and the new
// one starts (folded into a pending Added event, so the agent learns both at once).
func (r *Runtime) started(evs []runtime.Event, e *entry, d *description, pid int, inst string, adopting bool) []runtime.Event {
	name := d.c.Name
	if e.running {
		evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Instance: e.inst, Time: time.Now(), ExitCode: -1})
	}
	startedAt, ok := procStartTime(pid)
	if !ok {
		startedAt = time.Now()
	}
	e.inst, e.pid, e.running = inst, pid, true
	st := runtime.Event{Type: runtime.Started, Name: name, ID: d.id, Instance: inst, PID: pid,
		Time: startedAt, Adopted: adopting && !r.fresh[name]}
	if n := len(evs); n > 0 && evs[n-1].Type == runtime.Added {
		st.Type, st.Container = runtime.Added, evs[n-1].Container
		evs = evs[:n-1]
	}
	return append(evs, st)
}

// badSpecError is a container whose spec the agent cannot use; asking again will not
// help.
type badSpecError struct{ err error }

func (e *badSpecError) Error() string { return e.err.Error() }
func (e *badSpecError) Unwrap() error { return e.err }

func sameContainer(a, b runtime.Container) bool {
	return a.Identity == b.Identity && a.Owned == b.Owned && a.ManagedBy == b.ManagedBy &&
		reflect.DeepEqual(a.Spec, b.Spec) && fmt.Sprint(a.Err) == fmt.Sprint(b.Err) && reflect.DeepEqual(a.GPUs, b.GPUs)
}

// taskStatus is what containerd says of a container's task.
type taskStatus struct {
	pid      int
	running  bool
	code     int
	exitedAt time.Time
}

// taskState returns the state of a container's task; a container without a task is
// not running. An error means containerd could not say, and nothing may be concluded.
func taskState(nctx context.Context, c containerd.Container) (taskStatus, error) {
	task, err := c.Task(nctx, nil)
	if errdefs.IsNotFound(err) {
		return taskStatus{}, nil
	}
	if err != nil {
		return taskStatus{}, err
	}
	st, err := task.Status(nctx)
	if errdefs.IsNotFound(err) {
		return taskStatus{}, nil
	}
	if err != nil {
		return taskStatus{}, err
	}
	switch st.Status {
	case containerd.Running, containerd.Paused, containerd.Pausing:
		return taskStatus{pid: int(task.Pid()), running: true}, nil
	case containerd.Stopped:
		return taskStatus{code: int(st.ExitStatus), exitedAt: st.ExitTime}, nil
	}
	return taskStatus{}, nil
}

type description struct {
	c       runtime.Container
	id      string
	process *specs.Process
	hostNet bool
}

// describe reads a container's identity and checks; nil means it has none. An error
// means containerd could not be asked, or (badSpecError) the spec cannot be used.
func (r *Runtime) describe(nctx context.Context, client *containerd.Client, ns string, c containerd.Container) (*description, error) {
	info, err := c.Info(nctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return nil, err
	}
	if info.Labels[labelCRIKind] == "sandbox" {
		return nil, nil
	}
	d := &description{id: info.ID, c: identify(info)}
	spec, err := readSpec(info)
	if err != nil {
		return nil, err
	}
	// A Kubernetes container's pod: its sandbox, which holds the pod's annotations
	// and network.
	var sandbox *containers.Container
	if info.Labels[labelCRIKind] == "container" {
		if sandbox, err = loadSandbox(nctx, client, spec.Annotations[annotationSandbox]); err != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", d.c.Namespace, d.c.Pod, err)
		}
	}
	d.process, d.c.GPUs, d.hostNet = spec.Process, gpu.FromSpec(spec), hostNetwork(spec)
	if sandbox != nil && !d.hostNet {
		// The pod's containers join the sandbox's network namespace by path
		// (/proc/<sandbox pid>/ns/net); on a host-network pod that is the host's, which
		// the sandbox's own spec says by leaving the network namespace out.
		if sbSpec, err := readSpec(*sandbox); err == nil {
			d.hostNet = hostNetwork(sbSpec)
		}
	}
	d.c.Spec, d.c.Err = r.checks(ns, info, d.c.Identity, sandbox)
	if d.c.Spec == nil && d.c.Err == nil {
		return nil, nil
	}
	if d.c.Spec != nil && d.c.Spec.Name == "" {
		d.c.Spec.Name = d.c.Name
	}
	return d, nil
}

// identify names a container: namespace/pod/container for the kubelet's (CRI)
// containers, its ID otherwise; and says who restarts it.
func identify(info containers.Container) runtime.Container {
	labels := info.Labels
	var c runtime.Container
	if labels[labelCRIKind] == "container" {
		c.Identity = runtime.Identity{
			Name:      labels[labelPodNamespace] + "/" + labels[labelPodName] + "/" + labels[labelContainerName],
			Namespace: labels[labelPodNamespace], Pod: labels[labelPodName], Container: labels[labelContainerName],
		}
		c.ManagedBy = managedByKubelet
		return c
	}
	c.Identity = runtime.Identity{Name: info.ID, Container: info.ID}
	c.Owned = true
	if _, ok := labels[labelRestartStatus]; ok {
		c.Owned, c.ManagedBy = false, managedByRestartMonitor
	}
	return c
}

// readSpec decodes a container's OCI spec; it must have a process to exec with.
func readSpec(info containers.Container) (*oci.Spec, error) {
	var spec oci.Spec
	if info.Spec != nil {
		if err := json.Unmarshal(info.Spec.GetValue(), &spec); err != nil {
			return nil, &badSpecError{fmt.Errorf("container %s: spec: %w", info.ID, err)}
		}
	}
	if spec.Process == nil {
		return nil, &badSpecError{fmt.Errorf("container %s: spec has no process", info.ID)}
	}
	return &spec, nil
}

// hostNetwork reports whether the spec leaves the container in the host's network
// namespace.
func hostNetwork(spec *oci.Spec) bool {
	if spec.Linux == nil {
		return true
	}
	for _, n := range spec.Linux.Namespaces {
		if n.Type == specs.NetworkNamespace {
			return false
		}
	}
	return true
}

// checks finds a container's checks: --config by name, then the container label, then
// the pod annotation in its sandbox's CRI metadata. An error is a mistake in the
// checks, reported for that container.
func (r *Runtime) checks(ns string, info containers.Container, id runtime.Identity, sandbox *containers.Container) (*service.Container, error) {
	opts := r.opts.ServiceOptions
	switch cfg := r.config[id.Name]; {
	case cfg != nil:
		if cfg.CreatedByAgent() && (ns != OwnedNamespace || info.Labels[LabelOwned] != "true") {
			return nil, nil // a name the agent creates, not this container
		}
		return cfg, nil
	case info.Labels[LabelChecks] != "":
		path := fmt.Sprintf("container %s/%s label %q", ns, info.ID, LabelChecks)
		all, err := r.parsed.get(path, info.Labels[LabelChecks], func(raw []byte) (map[string]*service.Container, error) {
			c, err := service.ParseContainer(raw, path, opts)
			return map[string]*service.Container{"": c}, err
		})
		return copyOf(all[""]), err
	case sandbox != nil:
		return r.podAnnotationChecks(sandbox.Extensions, id, opts)
	}
	return nil, nil
}

// sandboxMetadata is the part of the CRI plugin's sandbox extension the agent reads.
type sandboxMetadata struct {
	Metadata struct {
		Config struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"Config"`
	} `json:"Metadata"`
}

// loadSandbox reads a pod sandbox's record (spec and CRI extensions). A sandbox that is
// gone is nil; any other error from containerd is returned, never taken for "no
// checks", which would drop the container's probes at the next reconcile.
func loadSandbox(nctx context.Context, client *containerd.Client, sandboxID string) (*containers.Container, error) {
	if sandboxID == "" {
		return nil, nil
	}
	sb, err := client.LoadContainer(nctx, sandboxID)
	if err == nil {
		var info containers.Container
		if info, err = sb.Info(nctx, containerd.WithoutRefreshedMetadata); err == nil {
			return &info, nil
		}
	}
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	return nil, fmt.Errorf("sandbox %s: %w", sandboxID, err)
}

// podAnnotationChecks parses the checks annotation out of the sandbox's extensions.
func (r *Runtime) podAnnotationChecks(exts map[string]typeurl.Any, id runtime.Identity, opts service.Options) (*service.Container, error) {
	ext, ok := exts[sandboxMetadataExt]
	if !ok {
		return nil, nil
	}
	var md sandboxMetadata
	if err := json.Unmarshal(ext.GetValue(), &md); err != nil {
		return nil, fmt.Errorf("pod %s/%s: sandbox metadata: %w", id.Namespace, id.Pod, err)
	}
	raw, ok := md.Metadata.Config.Annotations[AnnotationChecks]
	if !ok {
		return nil, nil
	}
	path := fmt.Sprintf("pod %s/%s annotation %q", id.Namespace, id.Pod, AnnotationChecks)
	all, err := r.parsed.get(path, raw, func(raw []byte) (map[string]*service.Container, error) {
		return service.ParseContainers(raw, path, opts)
	})
	if err != nil {
		return nil, err
	}
	return copyOf(all[id.Container]), nil
}

// copyOf returns a copy of a cached container entry that its user may change.
func copyOf(c *service.Container) *service.Container {
	if c == nil {
		return nil
	}
	cp := *c
	return &cp
}

// maxParsed bounds the parsed-checks cache; past it the cache starts over.
const maxParsed = 1024

// parsedChecks remembers the checks parsed from each distinct label or annotation text
// (by its SHA-256 and the path its errors are reported under), so that an unchanged
// annotation is parsed once, not at every containerd event of its pod: a hostile one
// can cost seconds of CPU on the goroutine that follows containerd.
type parsedChecks struct {
	mu           sync.Mutex
	m            map[parsedKey]parsedValue
	hits, misses int
}

type parsedKey struct {
	path string
	sum  [sha256.Size]byte
}

type parsedValue struct {
	all map[string]*service.Container
	err error
}

// get returns what parse returns for raw, parsing it only the first time.
func (p *parsedChecks) get(path, raw string, parse func([]byte) (map[string]*service.Container, error)) (map[string]*service.Container, error) {
	k := parsedKey{path: path, sum: sha256.Sum256([]byte(raw))}
	p.mu.Lock()
	v, ok := p.m[k]
	if ok {
		p.hits++
	} else {
		p.misses++
	}
	p.mu.Unlock()
	if ok {
		return v.all, v.err
	}
	v.all, v.err = parse([]byte(raw))
	p.mu.Lock()
	if p.m == nil || len(p.m) >= maxParsed {
		p.m = map[parsedKey]parsedValue{}
	}
	p.m[k] = v
	p.mu.Unlock()
	return v.all, v.err
}
