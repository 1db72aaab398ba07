// Package containerd is the production runtime: it discovers the containers containerd
// runs on the node, follows their events, probes them from inside (task exec, dials in
// their network namespace), stops them and restarts in place the ones it may restart,
// and creates the containers of a service.json that name a rootfs or an image.
package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

// Labels and annotations the runtime reads or writes.
const (
	// LabelChecks holds a container's checks as one service.json container entry.
	LabelChecks = "probe-agent.io/checks"
	// AnnotationChecks is the pod annotation holding an object of container entries
	// keyed by container name.
	AnnotationChecks = "probe-agent.io/checks"
	// LabelOwned marks the containers the agent created.
	LabelOwned = "probe-agent.io/owned"
	// OwnedNamespace is where the agent creates containers.
	OwnedNamespace = "probe-agent"

	labelRestartStatus = "containerd.io/restart.status"
	labelCRIKind       = "io.cri-containerd.kind"
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
	annotationSandbox  = "io.kubernetes.cri.sandbox-id"
	sandboxMetadataExt = "io.cri-containerd.sandbox.metadata"

	managedByKubelet        = "kubelet"
	managedByRestartMonitor = "containerd restart monitor"
)

// idRE is containerd's identifier syntax (identifiers.Validate), at most 76 characters.
var idRE = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// DefaultAddress is containerd's usual socket.
const DefaultAddress = "/run/containerd/containerd.sock"

// Options configure the runtime.
type Options struct {
	Address string
	// Namespaces to watch; empty means every namespace.
	Namespaces []string
	// Service holds entries from --config: checks for existing containers matched by
	// name, or containers to create from a rootfs or an image.
	Service *service.Service
	// ServiceOptions validate labels and annotations as files are validated.
	ServiceOptions service.Options
	// StateDir holds the logs of containers the agent starts.
	StateDir string
	Logger   *zap.Logger
}

// Runtime is the containerd runtime.
type Runtime struct {
	opts      Options
	log       *zap.Logger
	config    map[string]*service.Container
	connected atomic.Bool
	cleanup   sync.WaitGroup

	mu      sync.Mutex
	fresh   map[string]bool // containers this agent started itself: not adopted
	client  *containerd.Client
	entries map[string]*entry // by name
	ids     map[string]string // "namespace/id" -> name
	events  chan<- runtime.Event
}

type entry struct {
	c       runtime.Container
	ns, id  string
	running bool
	pid     int
	inst    string
	process *specs.Process
	hostNet bool
}

// Validate reports, with JSON paths, what the containerd runtime cannot do with svc.
func Validate(svc *service.Service) error {
	var errs service.ErrorList
	for i, c := range svc.Containers {
		p := fmt.Sprintf("containers[%d]", i)
		if c.Rootfs == "" && c.Image == "" {
			continue
		}
		if c.Rootfs != "" && len(c.Args) == 0 {
			errs = append(errs, &service.FieldError{Path: p + ".command", Msg: "required with rootfs"})
		}
		if !idRE.MatchString(c.Name) || len(c.Name) > 76 {
			errs = append(errs, &service.FieldError{Path: p + ".name", Msg: fmt.Sprintf("%q cannot be a containerd ID for a container the agent creates", c.Name)})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// New returns a runtime; Run connects.
func New(opts Options) (*Runtime, error) {
	if opts.Address == "" {
		opts.Address = DefaultAddress
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	r := &Runtime{opts: opts, log: opts.Logger, config: map[string]*service.Container{},
		entries: map[string]*entry{}, ids: map[string]string{}, fresh: map[string]bool{}}
	if opts.Service != nil {
		if err := Validate(opts.Service); err != nil {
			return nil, err
		}
		for i := range opts.Service.Containers {
			c := &opts.Service.Containers[i]
			r.config[c.Name] = c
		}
	}
	return r, nil
}

// Connected reports whether containerd answered the last call and the event stream is up.
func (r *Runtime) Connected() bool { return r.connected.Load() }

// Run connects, lists every container, follows events and reconnects with back-off when
// containerd goes away, listing again to catch up. Containers keep running when it
// returns: an agent restart must not disturb them.
func (r *Runtime) Run(ctx context.Context, events chan<- runtime.Event) error {
	r.mu.Lock()
	r.events = events
	r.mu.Unlock()
	defer r.cleanup.Wait()
	defer func() {
		r.mu.Lock()
		if r.client != nil {
			r.client.Close()
		}
		r.mu.Unlock()
	}()
	delay := 100 * time.Millisecond
	adopting := true
	for ctx.Err() == nil {
		synced, err := r.session(ctx, adopting)
		if synced {
			adopting, delay = false, 100*time.Millisecond
		}
		if ctx.Err() != nil {
			break
		}
		r.connected.Store(false)
		r.log.Warn("containerd unreachable; keeping the last known state and retrying",
			zap.String("address", r.opts.Address), zap.Duration("retry_in", delay), zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	r.connected.Store(false)
	return nil
}

func (r *Runtime) getClient() (*containerd.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client != nil {
		return r.client, nil
	}
	c, err := containerd.New(r.opts.Address, containerd.WithTimeout(2*time.Second))
	if err != nil {
		return nil, err
	}
	r.client = c
	return c, nil
}

// session subscribes, reconciles and follows events until the stream breaks. synced
// says whether the full listing succeeded.
func (r *Runtime) session(ctx context.Context, adopting bool) (synced bool, err error) {
	client, err := r.getClient()
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	serving, err := client.IsServing(sctx)
	cancel()
	if err != nil || !serving {
		return false, fmt.Errorf("containerd not serving: %w", err)
	}
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	// Subscribe before listing, so that nothing that happens in between is missed.
	evc, errc := client.Subscribe(subCtx,
		`topic~="^/tasks/(start|exit|oom)$"`, `topic~="^/containers/(create|update|delete)$"`)
	r.startOwned(ctx, client)
	if err := r.reconcile(ctx, client, adopting); err != nil {
		return false, err
	}
	r.connected.Store(true)
	r.log.Info("containerd connected", zap.String("address", r.opts.Address))
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-errc:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return true, err
		case e := <-evc:
			r.handle(ctx, client, e)
		}
	}
}

func (r *Runtime) watched(ns string) bool {
	return len(r.opts.Namespaces) == 0 || slices.Contains(r.opts.Namespaces, ns)
}

// send delivers events; it is only called from Run's goroutine without r.mu held,
// so events keep their order and the agent may call back into the runtime.
func (r *Runtime) send(evs []runtime.Event) {
	for _, ev := range evs {
		r.events <- ev
	}
}

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
		if cfg := r.config[name]; cfg != nil && (cfg.Rootfs != "" || cfg.Image != "") {
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
	pid, running, code, exitedAt, err := taskState(nctx, c)
	if err != nil {
		return "", fmt.Errorf("container %s/%s: task: %w", ns, c.ID(), err)
	}
	if exitCode != 0 {
		code = exitCode
	}
	name := d.c.Name
	var evs []runtime.Event
	r.mu.Lock()
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
	case running:
		inst := ns + "/" + d.id + ":" + strconv.Itoa(pid)
		if inst != e.inst || !e.running {
			if e.running {
				evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Instance: e.inst, Time: time.Now(), ExitCode: -1})
			}
			started, ok := procStartTime(pid)
			if !ok {
				started = time.Now()
			}
			e.inst, e.pid, e.running = inst, pid, true
			st := runtime.Event{Type: runtime.Started, Name: name, ID: d.id, Instance: inst, PID: pid,
				Time: started, Adopted: adopting && !r.fresh[name]}
			if n := len(evs); n > 0 && evs[n-1].Type == runtime.Added {
				st.Type, st.Container = runtime.Added, evs[n-1].Container
				evs = evs[:n-1]
			}
			evs = append(evs, st)
		}
	case e.running:
		e.running = false
		evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Instance: e.inst, Time: exitedAt, ExitCode: code})
	case adopting && exitedAt.After(time.Time{}) && d.c.Owned:
		// Found stopped at start: report the exit so that the restart policy applies.
		evs = append(evs, runtime.Event{Type: runtime.Exited, Name: name, Time: exitedAt, ExitCode: code})
	}
	r.mu.Unlock()
	r.send(evs)
	return name, nil
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

// taskState returns the state of a container's task; a container without a task is
// not running. An error means containerd could not say, and nothing may be concluded.
func taskState(nctx context.Context, c containerd.Container) (pid int, running bool, code int, exitedAt time.Time, err error) {
	task, err := c.Task(nctx, nil)
	if errdefs.IsNotFound(err) {
		return 0, false, 0, time.Time{}, nil
	}
	if err != nil {
		return 0, false, 0, time.Time{}, err
	}
	st, err := task.Status(nctx)
	if errdefs.IsNotFound(err) {
		return 0, false, 0, time.Time{}, nil
	}
	if err != nil {
		return 0, false, 0, time.Time{}, err
	}
	if st.Status == containerd.Running || st.Status == containerd.Paused || st.Status == containerd.Pausing {
		return int(task.Pid()), true, 0, time.Time{}, nil
	}
	if st.Status == containerd.Stopped {
		return 0, false, int(st.ExitStatus), st.ExitTime, nil
	}
	return 0, false, 0, time.Time{}, nil
}

type description struct {
	c       runtime.Container
	id      string
	process *specs.Process
	hostNet bool
}

// describe reads a container's identity and checks; nil means it has none.
func (r *Runtime) describe(nctx context.Context, client *containerd.Client, ns string, c containerd.Container) (*description, error) {
	info, err := c.Info(nctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return nil, err
	}
	labels := info.Labels
	kind := labels[labelCRIKind]
	if kind == "sandbox" {
		return nil, nil
	}
	d := &description{id: info.ID}
	cri := kind == "container"
	if cri {
		d.c.Identity = runtime.Identity{
			Name:      labels[labelPodNamespace] + "/" + labels[labelPodName] + "/" + labels[labelContainerName],
			Namespace: labels[labelPodNamespace], Pod: labels[labelPodName], Container: labels[labelContainerName],
		}
		d.c.ManagedBy = managedByKubelet
	} else {
		d.c.Identity = runtime.Identity{Name: info.ID, Container: info.ID}
		d.c.Owned = true
	}
	if _, ok := labels[labelRestartStatus]; ok && !cri {
		d.c.Owned, d.c.ManagedBy = false, managedByRestartMonitor
	}
	var spec oci.Spec
	if info.Spec != nil {
		if err := json.Unmarshal(info.Spec.GetValue(), &spec); err != nil {
			return nil, &badSpecError{fmt.Errorf("container %s: spec: %w", info.ID, err)}
		}
	}
	if spec.Process == nil {
		return nil, &badSpecError{fmt.Errorf("container %s: spec has no process", info.ID)}
	}
	d.process = spec.Process
	d.c.GPUs = gpu.FromSpec(&spec)
	d.hostNet = true
	if spec.Linux != nil {
		for _, n := range spec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				d.hostNet = false
			}
		}
	}

	// Where the checks come from: --config by name, then the container label, then
	// the pod annotation.
	opts := r.opts.ServiceOptions
	switch cfg := r.config[d.c.Name]; {
	case cfg != nil:
		if (cfg.Rootfs != "" || cfg.Image != "") && (ns != OwnedNamespace || labels[LabelOwned] != "true") {
			return nil, nil // a name the agent creates, not this container
		}
		d.c.Spec = cfg
	case labels[LabelChecks] != "":
		path := fmt.Sprintf("container %s/%s label %q", ns, info.ID, LabelChecks)
		d.c.Spec, d.c.Err = service.ParseContainer([]byte(labels[LabelChecks]), path, opts)
	case cri:
		d.c.Spec, d.c.Err = r.podChecks(nctx, client, spec.Annotations[annotationSandbox], d.c.Identity, opts)
	}
	if d.c.Spec == nil && d.c.Err == nil {
		return nil, nil
	}
	if d.c.Spec != nil && d.c.Spec.Name == "" {
		d.c.Spec.Name = d.c.Name
	}
	return d, nil
}

// sandboxMetadata is the part of the CRI plugin's sandbox extension the agent reads.
type sandboxMetadata struct {
	Metadata struct {
		Config struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"Config"`
	} `json:"Metadata"`
}

// podChecks reads the pod annotation from the sandbox container's CRI metadata.
func (r *Runtime) podChecks(nctx context.Context, client *containerd.Client, sandboxID string, id runtime.Identity, opts service.Options) (*service.Container, error) {
	if sandboxID == "" {
		return nil, nil
	}
	sb, err := client.LoadContainer(nctx, sandboxID)
	if err != nil {
		return nil, nil
	}
	exts, err := sb.Extensions(nctx)
	if err != nil {
		return nil, nil
	}
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
	all, err := service.ParseContainers([]byte(raw), fmt.Sprintf("pod %s/%s annotation %q", id.Namespace, id.Pod, AnnotationChecks), opts)
	if err != nil {
		return nil, err
	}
	return all[id.Container], nil
}

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
// container replaced by a newer instance under the same name is only unlinked.
func (r *Runtime) forget(ns, id string) {
	var evs []runtime.Event
	r.mu.Lock()
	if name, ok := r.ids[ns+"/"+id]; ok {
		delete(r.ids, ns+"/"+id)
		if e := r.entries[name]; e != nil && e.id == id && e.ns == ns {
			evs = r.remove(name, e)
		}
	}
	r.mu.Unlock()
	r.send(evs)
}

// Target returns how to probe a container's current instance.
func (r *Runtime) Target(name string) (runtime.Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[name]
	if e == nil || !e.running {
		return nil, fmt.Errorf("container %s: not running", name)
	}
	return &target{client: r.client, ns: e.ns, id: e.id, pid: e.pid, process: e.process, hostNet: e.hostNet,
		fifoDir: filepath.Join(r.opts.StateDir, "fifo"), cleanup: &r.cleanup}, nil
}

func (r *Runtime) lookup(name string) (*containerd.Client, string, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[name]
	if e == nil {
		return nil, "", "", fmt.Errorf("container %s: not found", name)
	}
	if r.client == nil {
		return nil, "", "", fmt.Errorf("container %s: containerd not connected", name)
	}
	return r.client, e.ns, e.id, nil
}

// Stop sends SIGTERM to the container's task, SIGKILL to all its processes after grace,
// and returns once the task has exited.
func (r *Runtime) Stop(ctx context.Context, name string, grace time.Duration) error {
	client, ns, id, err := r.lookup(name)
	if err != nil {
		return err
	}
	nctx := namespaces.WithNamespace(ctx, ns)
	c, err := client.LoadContainer(nctx, id)
	if err != nil {
		return fmt.Errorf("container %s: %w", name, err)
	}
	task, err := c.Task(nctx, nil)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("container %s: %w", name, err)
	}
	exitc, err := task.Wait(nctx)
	if err != nil {
		return fmt.Errorf("container %s: %w", name, err)
	}
	if err := task.Kill(nctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("container %s: SIGTERM: %w", name, err)
	}
	select {
	case <-exitc:
		return nil
	case <-time.After(grace):
	case <-ctx.Done():
	}
	kctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 30*time.Second)
	defer cancel()
	if err := task.Kill(kctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("container %s: SIGKILL: %w", name, err)
	}
	select {
	case <-exitc:
		return nil
	case <-kctx.Done():
		return fmt.Errorf("container %s: still running after SIGKILL", name)
	}
}

// Start starts a new task for a container the agent may restart: the old task is
// deleted and a new one created from the same container (restart in place). Containers
// of the agent's service.json are created first if they do not exist.
func (r *Runtime) Start(ctx context.Context, name string) error {
	var managedBy string
	r.mu.Lock()
	if e := r.entries[name]; e != nil && !e.c.Owned {
		managedBy = e.c.ManagedBy
	}
	r.mu.Unlock()
	if managedBy != "" {
		return fmt.Errorf("container %s: restarted by the %s, not the agent", name, managedBy)
	}
	client, err := r.getClient()
	if err != nil {
		return err
	}
	var ns, id string
	if cfg := r.config[name]; cfg != nil && (cfg.Rootfs != "" || cfg.Image != "") {
		ns, id = OwnedNamespace, name
		if err := r.create(ctx, client, cfg); err != nil {
			r.send([]runtime.Event{{Type: runtime.StartFailed, Name: name, Time: time.Now(), Err: err}})
			return err
		}
	} else if _, ns, id, err = r.lookup(name); err != nil {
		return err
	}
	r.mu.Lock()
	r.fresh[name] = true
	r.mu.Unlock()
	if err := r.newTask(ctx, client, ns, id); err != nil {
		err = fmt.Errorf("container %s: %w", name, err)
		r.send([]runtime.Event{{Type: runtime.StartFailed, Name: name, Time: time.Now(), Err: err}})
		return err
	}
	return nil
}

func (r *Runtime) newTask(ctx context.Context, client *containerd.Client, ns, id string) error {
	// Creating a task starts a shim; cancelling half-way would orphan it, so the
	// caller's cancellation does not reach these calls, a timeout bounds them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	nctx := namespaces.WithNamespace(ctx, ns)
	c, err := client.LoadContainer(nctx, id)
	if err != nil {
		return err
	}
	if old, err := c.Task(nctx, nil); err == nil {
		if st, err := old.Status(nctx); err == nil && st.Status == containerd.Running {
			return errors.New("already running")
		}
		if _, err := old.Delete(nctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("deleting the old task: %w", err)
		}
	}
	logs := filepath.Join(r.opts.StateDir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	task, err := c.NewTask(nctx, cio.LogFile(filepath.Join(logs, ns+"_"+id+".log")))
	if err != nil {
		return fmt.Errorf("creating the task: %w", err)
	}
	if err := task.Start(nctx); err != nil {
		_, _ = task.Delete(nctx, containerd.WithProcessKill)
		return fmt.Errorf("starting the task: %w", err)
	}
	return nil
}

// create makes a container of the agent's service.json in OwnedNamespace, unless it
// exists already (the agent restarted).
func (r *Runtime) create(ctx context.Context, client *containerd.Client, cfg *service.Container) error {
	nctx := namespaces.WithNamespace(ctx, OwnedNamespace)
	if _, err := client.LoadContainer(nctx, cfg.Name); err == nil {
		return nil
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	env := cfg.Environ()
	labels := map[string]string{LabelOwned: "true"}
	var opts []containerd.NewContainerOpts
	var specOpts []oci.SpecOpts
	if cfg.Rootfs != "" {
		root, err := filepath.Abs(cfg.Rootfs)
		if err != nil {
			return err
		}
		if st, err := os.Stat(root); err != nil || !st.IsDir() {
			return fmt.Errorf("container %s: rootfs %s is not a directory", cfg.Name, root)
		}
		specOpts = append(specOpts, oci.WithRootFSPath(root), oci.WithDefaultPathEnv)
	} else {
		img, err := client.GetImage(nctx, cfg.Image)
		if err != nil {
			return fmt.Errorf("container %s: image %s is not in containerd's image store (%w); the agent never pulls", cfg.Name, cfg.Image, err)
		}
		if ok, _ := img.IsUnpacked(nctx, containerd.DefaultSnapshotter); !ok {
			if err := img.Unpack(nctx, containerd.DefaultSnapshotter); err != nil {
				return fmt.Errorf("container %s: unpacking %s: %w", cfg.Name, cfg.Image, err)
			}
		}
		opts = append(opts, containerd.WithImage(img), containerd.WithNewSnapshot(cfg.Name+"-snapshot", img))
		specOpts = append(specOpts, oci.WithImageConfig(img), withDefaultPath)
	}
	if len(cfg.Args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(cfg.Args...))
	}
	specOpts = append(specOpts, oci.WithEnv(env), oci.WithHostname(cfg.Name))
	opts = append(opts, containerd.WithContainerLabels(labels), containerd.WithNewSpec(specOpts...))
	if _, err := client.NewContainer(nctx, cfg.Name, opts...); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("container %s: %w", cfg.Name, err)
	}
	r.log.Info("created container", zap.String("namespace", OwnedNamespace), zap.String("id", cfg.Name))
	return nil
}

// withDefaultPath adds the default PATH when the image sets none.
func withDefaultPath(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
	for _, e := range s.Process.Env {
		if len(e) > 5 && e[:5] == "PATH=" {
			return nil
		}
	}
	return oci.WithDefaultPathEnv(ctx, c, ctr, s)
}

// startOwned creates and starts the service.json containers that do not run; failures
// are reported as StartFailed and retried by the agent with back-off.
func (r *Runtime) startOwned(ctx context.Context, client *containerd.Client) {
	for name, cfg := range r.config {
		if cfg.Rootfs == "" && cfg.Image == "" {
			continue
		}
		nctx := namespaces.WithNamespace(ctx, OwnedNamespace)
		if c, err := client.LoadContainer(nctx, name); err == nil {
			if t, err := c.Task(nctx, nil); err == nil {
				if _, err := t.Status(nctx); err == nil {
					continue // running, or stopped: reconcile reports it and the policy decides
				}
			}
		}
		r.mu.Lock()
		_, known := r.entries[name]
		cc := runtime.Container{Identity: runtime.Identity{Name: name, Container: name}, Spec: cfg, Owned: true,
			GPUs: gpu.FromEnv(cfg.Environ())}
		if !known {
			r.entries[name] = &entry{c: cc, ns: OwnedNamespace, id: name}
		}
		r.mu.Unlock()
		if !known {
			r.send([]runtime.Event{{Type: runtime.Added, Name: name, Time: time.Now(), Container: &cc}})
		}
		if err := r.Start(ctx, name); err != nil {
			r.log.Error("cannot start container", zap.String("container", name), zap.Error(err))
		}
	}
}
