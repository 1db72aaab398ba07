// Command probe-agent is a node-local health-probe agent: it runs liveness, readiness
// and startup checks against the containers of its node, restarts failed ones and
// reports everything as logs, metrics and a JSON status API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	goruntime "runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/probe-agent/probe-agent/agent"
	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/nvml"
	"github.com/probe-agent/probe-agent/metrics"
	"github.com/probe-agent/probe-agent/prober"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/runtime/containerd"
	"github.com/probe-agent/probe-agent/runtime/process"
	"github.com/probe-agent/probe-agent/service"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// exitError carries an exit code for errors already reported to the user.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// run executes the CLI with args and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		fmt.Fprintln(stderr, "probe-agent:", err)
		return 1
	}
	return 0
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "probe-agent",
		Short:         "Node-local health-probe agent for containers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newValidateCmd(), newGPUCmd(), newVersionCmd())
	return root
}

type runFlags struct {
	config        string
	runtime       string
	address       string
	namespaces    []string
	stateDir      string
	stateDirSet   bool
	runtimeDir    string
	listen        string
	reservedPorts []int
	backoff       time.Duration
	backoffMax    time.Duration
	grace         time.Duration
	logLevel      string
	logFormat     string
	workers       int
	maxExec       int
	execRunner    string
	gpu           gpuFlags
	kube          kubeFlags
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent",
		Long: "Run the agent: start (process runtime) or find the containers, probe them, restart failed ones,\n" +
			"and serve /metrics, /healthz, /readyz and /v1/containers on --listen.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.stateDirSet = cmd.Flags().Changed("state-dir")
			return runAgent(cmd.Context(), f, cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "service.json with the containers and their checks (required for the process runtime)")
	fl.StringVar(&f.runtime, "runtime", "process", "container runtime: process or containerd")
	fl.StringVar(&f.address, "containerd-address", containerd.DefaultAddress, "containerd socket (containerd runtime)")
	fl.StringSliceVar(&f.namespaces, "namespaces", nil, "containerd namespaces to watch (default: every namespace)")
	fl.StringVar(&f.stateDir, "state-dir", "/var/lib/probe-agent", "where probe state, restart counts and back-off survive agent restarts, and logs of containers the agent starts; the process runtime uses it only when given")
	fl.StringVar(&f.runtimeDir, "runtime-dir", containerd.DefaultRuntimeDir, "where exec probes' FIFOs live (containerd runtime); the same path on the host as for the agent, and writable")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:9469", "address of the metrics and status HTTP server")
	fl.IntSliceVar(&f.reservedPorts, "reserved-ports", service.DefaultReservedPorts, "ports a container or check may not use")
	fl.DurationVar(&f.backoff, "restart-backoff", runtime.DefaultBackoff, "first restart back-off; doubles per crash")
	fl.DurationVar(&f.backoffMax, "restart-backoff-max", runtime.DefaultBackoffMax, "largest restart back-off; the back-off resets after twice this without a crash")
	fl.DurationVar(&f.grace, "termination-grace-period", 30*time.Second, "default time between SIGTERM and SIGKILL (at least 2s)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fl.IntVar(&f.workers, "workers", 64, "network probes (http_get, tcp_socket, grpc) that may run at once")
	fl.StringVar(&f.execRunner, "exec-runner", "auto", "exec probes on containerd: auto (on a shell the agent keeps running in each container, forking each probe's command; containerd exec where it cannot) or off (one containerd exec per probe)")
	fl.IntVar(&f.maxExec, "max-concurrent-exec", 8, "exec probes that may run at once, on workers of their own")
	f.gpu.register(fl, true)
	f.kube.register(fl)
	return cmd
}

func newLogger(level, format string, w io.Writer) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("--log-format: %q is not json or console", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)), nil
}

func loadService(path string, reserved []int, runtimeName string) (*service.Service, error) {
	if runtimeName != "process" && runtimeName != "containerd" {
		return nil, fmt.Errorf("--runtime: %q is not a known runtime (process, containerd)", runtimeName)
	}
	if path == "" {
		if runtimeName == "containerd" {
			return nil, nil
		}
		return nil, errors.New("--config is required")
	}
	svc, err := service.ParseFile(path, service.Options{ReservedPorts: reserved})
	if err != nil {
		return nil, err
	}
	validate := process.Validate
	if runtimeName == "containerd" {
		validate = containerd.Validate
	}
	if err := validate(svc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return svc, nil
}

func runAgent(ctx context.Context, f runFlags, stderr io.Writer) error {
	log, err := newLogger(f.logLevel, f.logFormat, stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	if f.execRunner != "auto" && f.execRunner != "off" {
		return fmt.Errorf("--exec-runner: %q is not auto or off", f.execRunner)
	}
	svc, err := loadService(f.config, f.reservedPorts, f.runtime)
	if err != nil {
		return err
	}
	if svc != nil {
		for _, w := range svc.Warnings {
			log.Warn("service.json warning", zap.String("config", f.config), zap.String("path", w.Path), zap.String("warning", w.Msg))
		}
		if len(svc.Ignored) > 0 {
			log.Info("service.json EAS platform fields ignored", zap.String("config", f.config), zap.Strings("paths", svc.Ignored))
		}
	}
	grace := max(f.grace, agent.MinGracePeriod)
	var rt runtime.Runtime
	stateDir := f.stateDir
	switch f.runtime {
	case "process":
		if !f.stateDirSet {
			stateDir = "" // a local try-out: no state unless asked for
		}
		rt, err = process.New(svc, process.Options{ShutdownGrace: grace, StateDir: stateDir, Logger: log})
	case "containerd":
		rt, err = containerd.New(containerd.Options{Address: f.address, Namespaces: f.namespaces, Service: svc,
			ServiceOptions: service.Options{ReservedPorts: f.reservedPorts}, StateDir: f.stateDir, RuntimeDir: f.runtimeDir,
			NoExecRunner: f.execRunner == "off", Logger: log})
	}
	if err != nil {
		return err
	}
	opened, err := openGPU(f.gpu, log)
	if err != nil {
		return err
	}
	if opened.src != nil {
		defer opened.src.Close()
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	var a *agent.Agent
	m := metrics.New(version, func() float64 { return float64(a.Manager().Scheduled()) })
	kc, err := f.kube.client(log, m)
	if err != nil {
		return err
	}
	var k agent.Kubernetes
	if kc != nil {
		k = kc
	}
	a = agent.New(agent.Options{
		Runtime: rt, Logger: log, Metrics: m,
		Prober: prober.Options{Workers: f.workers, MaxConcurrentExec: f.maxExec,
			Settings: prober.Settings{UserAgent: "probe-agent/" + version}},
		Backoff: f.backoff, BackoffMax: f.backoffMax, GracePeriod: grace, StateDir: stateDir,
		GPU: opened.mon, GPUUnavailable: opened.unavailable, GPUReadiness: f.gpu.readiness,
		Kubernetes: k,
	})

	m.Registry.MustRegister(gpu.NewCollectorFunc(a.GPUMonitor, a.ContainerGPUs))
	srv := serveStatus(ln, a.Handler(m.Registry), defaultHTTPLimits, log)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("probe-agent started", zap.String("version", version), zap.String("runtime", f.runtime),
		zap.String("config", f.config), zap.String("listen", ln.Addr().String()), zap.Bool("gpu_monitoring", opened.mon != nil))
	late := make(chan gpu.Source, 1)
	retryCtx, stopRetry := context.WithCancel(ctx)
	if opened.retry {
		go func() {
			late <- retryGPU(retryCtx, f.gpu, log, func(lib string) (gpu.Source, error) {
				return nvml.Load(lib, nvml.Options{PollTimeout: f.gpu.timeout})
			}, a.AttachGPU)
		}()
	} else {
		late <- nil
	}
	kubeDone := make(chan struct{})
	go func() {
		defer close(kubeDone)
		if kc != nil {
			if err := kc.Run(ctx); err != nil {
				log.Error("kubernetes", zap.Error(err))
			}
		}
	}()
	runErr := a.Run(ctx)
	stopRetry()
	<-kubeDone
	if src := <-late; src != nil {
		src.Close() // the agent has stopped its monitor
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	log.Info("probe-agent stopped")
	return runErr
}

func newValidateCmd() *cobra.Command {
	var (
		config, runtimeName string
		reserved            []int
	)
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a service.json file and print every problem with its JSON path",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" {
				return errors.New("--config is required")
			}
			svc, err := loadService(config, reserved, runtimeName)
			if err != nil {
				for _, e := range service.Errors(err) {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", config, e)
				}
				return exitError{1}
			}
			if svc == nil {
				return errors.New("--config is required")
			}
			printValidated(cmd.OutOrStdout(), config, svc)
			return nil
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "service.json to check")
	cmd.Flags().StringVar(&runtimeName, "runtime", "process", "runtime whose requirements apply: process or containerd")
	cmd.Flags().IntSliceVar(&reserved, "reserved-ports", service.DefaultReservedPorts, "ports a container or check may not use")
	return cmd
}

// printValidated writes what validate found in a file that loads: its warnings, the
// EAS platform fields it ignores, and a count of its containers.
func printValidated(w io.Writer, config string, svc *service.Service) {
	for _, e := range svc.Warnings {
		fmt.Fprintf(w, "%s: warning: %s\n", config, e)
	}
	for _, p := range svc.Ignored {
		fmt.Fprintf(w, "%s: %s: %s\n", config, p, service.Ignored)
	}
	counts := count(len(svc.Containers), "container")
	if len(svc.Warnings) > 0 {
		counts += ", " + count(len(svc.Warnings), "warning")
	}
	fmt.Fprintf(w, "%s: ok (%s)\n", config, counts)
}

// count writes n things, "1 thing" or "2 things".
func count(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "probe-agent %s (%s, %s/%s)\n", version, goruntime.Version(), goruntime.GOOS, goruntime.GOARCH)
		},
	}
}
