// Package containerd is the production runtime: it discovers the containers containerd
// runs on the node, follows their events, probes them from inside (task exec, dials in
// their network namespace), stops them and restarts in place the ones it may restart,
// and creates the containers of a service.json that name a rootfs or an image.
//
// Its files, by what they do:
//   - containerd.go: Options, New, the Runtime's state;
//   - session.go: connecting, reconnecting with back-off, delivering events in order;
//   - discover.go: listing and reconciling containers, reading each one's identity,
//     spec and checks (service.json, container label, pod annotation);
//   - events.go: containerd's task and container events;
//   - lifecycle.go: probe targets, stop, start and in-place restart;
//   - owned.go: creating the containers of the agent's own service.json;
//   - target.go, netns.go: exec through the task, dials in the container's namespace.
package containerd

import (
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"

	"github.com/containerd/containerd"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.uber.org/zap"

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

// DefaultRuntimeDir is where exec probes' FIFOs live unless Options say otherwise.
const DefaultRuntimeDir = "/run/probe-agent"

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
	// StateDir holds the logs of containers the agent starts; when it cannot be
	// written, their output is discarded instead.
	StateDir string
	// RuntimeDir holds the FIFOs of exec probes (default DefaultRuntimeDir). containerd's
	// shim opens them by path, so it must be the same path on the host; exec probes
	// need it writable, the state dir they never need.
	RuntimeDir string
	// NoExecRunner runs every exec probe through containerd exec (--exec-runner=off)
	// instead of on a runner in the container (runner.go).
	NoExecRunner bool
	Logger       *zap.Logger
}

// Runtime is the containerd runtime.
type Runtime struct {
	opts      Options
	log       *zap.Logger
	config    map[string]*service.Container
	connected atomic.Bool
	cleanup   sync.WaitGroup
	parsed    parsedChecks

	mu      sync.Mutex
	fresh   map[string]bool // containers this agent started itself: not adopted
	client  *containerd.Client
	entries map[string]*entry // by name
	ids     map[string]string // "namespace/id" -> name
	events  chan<- runtime.Event

	runners     map[string]*runners // by instance
	runnerNotes map[string]string   // by container: the last reason logged for not using a runner
	execPath    func(string)
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
		if !c.CreatedByAgent() {
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
	if opts.RuntimeDir == "" {
		opts.RuntimeDir = DefaultRuntimeDir
	}
	r := &Runtime{opts: opts, log: opts.Logger, config: map[string]*service.Container{},
		entries: map[string]*entry{}, ids: map[string]string{}, fresh: map[string]bool{},
		runners: map[string]*runners{}, runnerNotes: map[string]string{}}
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

// ReportExecPaths sets what counts the path each exec probe takes, "runner" or
// "exec"; called before Run.
func (r *Runtime) ReportExecPaths(f func(path string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.execPath = f
}

// Connected reports whether containerd answered the last call and the event stream is up.
func (r *Runtime) Connected() bool { return r.connected.Load() }
