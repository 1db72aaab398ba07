// Package kube is the Kubernetes API side of the agent: the agent's verdicts reach
// traffic through it. It watches the pods of the agent's node (one informer, field
// selector spec.nodeName), owns the readiness-gate condition of the pods that list it
// (written through pods/status only on change, coalesced per pod, retried with
// back-off), records Events on transitions and actions through client-go's events
// recorder, and keeps a GPU health condition on the node. The agent feeds it; it knows
// nothing of probes or containerd.
//
// Its files: kube.go (Options, Client, Run, config), gate.go (the readiness gate),
// verdict.go (the condition from the verdicts, pure), events.go, node.go.
package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
)

// Defaults of the conditions the agent owns.
const (
	DefaultGateCondition = "probe-agent.io/ready"
	DefaultGPUCondition  = "probe-agent.io/GPUHealthy"
	// FieldManager names the agent's writes.
	FieldManager = "probe-agent"
)

// Options configure a Client.
type Options struct {
	Config   *rest.Config
	NodeName string
	// GateCondition is the readiness-gate condition type the agent owns in pods that
	// list it (default DefaultGateCondition); GPUCondition the node condition.
	GateCondition, GPUCondition string
	Logger                      *zap.Logger
	// OnUp is told whether the API server answered the last request.
	OnUp func(up bool)
	// PingEvery is how often the API server's /readyz is read while it is not known
	// to be up (default 15 s), and every HeartbeatEvery while it is (default 1 min); a
	// failed write says sooner that it went away.
	PingEvery, HeartbeatEvery time.Duration
}

// Client writes the agent's verdicts to the API server.
type Client struct {
	opts  Options
	log   *zap.Logger
	cs    kubernetes.Interface
	pods  corelisters.PodLister
	inf   cache.SharedIndexInformer
	queue workqueue.TypedRateLimitingInterface[string]

	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder

	mu      sync.Mutex
	desired map[string][]ContainerVerdict // by namespace/name
	synced  bool
	node    nodeCondition
	nodeSet bool

	nodeWake chan struct{}
	pingNow  chan struct{}
	up       atomic.Bool
	upKnown  atomic.Bool
	writes   atomic.Int64 // status and node writes, for tests
}

// Config returns the client configuration for mode auto|on|off: kubeconfig when given,
// else the in-cluster configuration. nil with no error means off (or auto outside a
// cluster).
func Config(mode, kubeconfig string) (*rest.Config, error) {
	switch mode {
	case "off":
		return nil, nil
	case "auto", "on":
	default:
		return nil, fmt.Errorf("--kubernetes: %q is not auto, on or off", mode)
	}
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) && mode == "auto" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--kubernetes=%s: %w", mode, err)
	}
	return cfg, nil
}

// New returns a client; Run starts it.
func New(opts Options) (*Client, error) {
	if opts.NodeName == "" {
		return nil, errors.New("kubernetes: the node name is required (--node-name, or NODE_NAME from the downward API)")
	}
	if opts.GateCondition == "" {
		opts.GateCondition = DefaultGateCondition
	}
	if opts.GPUCondition == "" {
		opts.GPUCondition = DefaultGPUCondition
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.OnUp == nil {
		opts.OnUp = func(bool) {}
	}
	if opts.PingEvery <= 0 {
		opts.PingEvery = 15 * time.Second
	}
	if opts.HeartbeatEvery <= 0 {
		opts.HeartbeatEvery = time.Minute
	}
	cfg := rest.CopyConfig(opts.Config)
	cfg.UserAgent = FieldManager
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String()
	}))
	podInf := factory.Core().V1().Pods()
	c := &Client{opts: opts, log: opts.Logger, cs: cs, pods: podInf.Lister(), inf: podInf.Informer(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "probe-agent-gates"}),
		desired: map[string][]ContainerVerdict{}, nodeWake: make(chan struct{}, 1),
		pingNow: make(chan struct{}, 1)}
	c.broadcaster = events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, FieldManager)
	_, err = c.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePod,
		UpdateFunc: func(_, obj any) { c.enqueuePod(obj) },
	})
	if err != nil {
		return nil, err
	}
	_ = c.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		c.setUp(false, err)
		cache.DefaultWatchErrorHandler(ctx, r, err)
	})
	return c, nil
}

// Run watches the node's pods and writes conditions until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if err := c.broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return err
	}
	defer c.broadcaster.Shutdown()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { c.inf.RunWithContext(ctx) })
	wg.Go(func() { c.ping(ctx) })
	wg.Go(func() { c.nodeLoop(ctx) })
	c.log.Info("kubernetes: watching this node's pods", zap.String("node", c.opts.NodeName),
		zap.String("gate_condition", c.opts.GateCondition))
	if !cache.WaitForCacheSync(ctx.Done(), c.inf.HasSynced) {
		return nil
	}
	wg.Go(func() {
		for c.process(ctx) {
		}
	})
	<-ctx.Done()
	c.queue.ShutDown()
	return nil
}

// Watching reports whether the informer has listed the node's pods.
func (c *Client) Watching() bool { return c.inf.HasSynced() }

// Up reports whether the API server answered the last request.
func (c *Client) Up() bool { return c.up.Load() }

// setUp records whether the API server answered, and logs the changes.
func (c *Client) setUp(up bool, err error) {
	was, known := c.up.Swap(up), c.upKnown.Swap(true)
	c.opts.OnUp(up)
	switch {
	case up && (!was || !known):
		c.log.Info("kubernetes: API server reachable")
	case !up && (was || !known):
		c.log.Warn("kubernetes: API server unreachable; conditions and events wait for it", zap.Error(err))
	}
	if !up {
		select {
		case c.pingNow <- struct{}{}:
		default:
		}
	}
}

// ping reads /readyz, so that being up is known while no write is due: every
// PingEvery while the API server is not known to be up, every HeartbeatEvery while it
// is. An idle node costs the API server one watch and sixty reads an hour.
func (c *Client) ping(ctx context.Context) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(rctx).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		c.setUp(err == nil, err)
		wait := c.opts.HeartbeatEvery
		if err != nil {
			wait = c.opts.PingEvery
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.pingNow:
			t.Stop()
			select { // a failure just seen: look again after PingEvery, not at once
			case <-ctx.Done():
				return
			case <-time.After(c.opts.PingEvery):
			}
		}
	}
}
