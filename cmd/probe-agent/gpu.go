package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/gpu/nvml"
)

type gpuFlags struct {
	mode       string
	readiness  bool
	driverRoot string
	fatal      string
	ignore     string
	interval   time.Duration
	timeout    time.Duration
	retry      time.Duration
}

func (g *gpuFlags) register(fl *pflag.FlagSet, agent bool) {
	if agent {
		fl.StringVar(&g.mode, "gpu", "auto", "GPU monitoring through NVML: auto (when the driver's library loads), on (fail without it) or off")
		fl.BoolVar(&g.readiness, "gpu-readiness", true, "take readiness away from a container while one of its GPUs is unhealthy")
		fl.DurationVar(&g.interval, "gpu-poll-interval", 10*time.Second, "how often GPU health is read (events are followed as they come)")
		fl.DurationVar(&g.retry, "gpu-init-retry", time.Minute, "with --gpu=auto, how often to try NVML again when the driver is not there yet (a driver container still starting); 0 never")
	}
	fl.StringVar(&g.driverRoot, "nvidia-driver-root", os.Getenv("NVIDIA_DRIVER_ROOT"), "root of the NVIDIA driver's files (e.g. /run/nvidia/driver); default $NVIDIA_DRIVER_ROOT, else the loader's search path")
	fl.StringVar(&g.fatal, "gpu-xid-fatal", "", "XIDs that make a GPU unhealthy besides the defaults, or all (the device plugin's syntax: 79,48)")
	fl.StringVar(&g.ignore, "gpu-xid-ignore", "", "XIDs to ignore besides the defaults (13,31,43,45,68), or all; --gpu-xid-fatal wins")
	fl.DurationVar(&g.timeout, "gpu-poll-timeout", 5*time.Second, "longest a GPU poll may take before it counts as failed (a wedged GPU)")
}

func (g *gpuFlags) policy() (gpu.Policy, error) {
	pol, errs := gpu.NewPolicy(g.fatal, g.ignore)
	if len(errs) > 0 {
		return pol, fmt.Errorf("--gpu-xid-fatal/--gpu-xid-ignore: %w", errors.Join(errs...))
	}
	return pol, nil
}

// gpuOpening is what openGPU found.
type gpuOpening struct {
	mon *gpu.Monitor
	src gpu.Source
	// unavailable says why there is no monitor; retry, whether trying again later
	// may help.
	unavailable string
	retry       bool
}

// openGPU starts GPU monitoring as the flags say. It returns no monitor and why when
// there is none; an error only when --gpu=on and NVML cannot be used, or a flag is
// wrong.
func openGPU(g gpuFlags, log *zap.Logger) (gpuOpening, error) {
	pol, err := g.policy()
	if err != nil {
		return gpuOpening{}, err
	}
	switch g.mode {
	case "off":
		return gpuOpening{unavailable: "GPU monitoring is off (--gpu=off)"}, nil
	case "auto", "on":
	default:
		return gpuOpening{}, fmt.Errorf("--gpu: %q is not auto, on or off", g.mode)
	}
	lib := nvml.LibraryPath(g.driverRoot)
	src, err := nvml.Load(lib, nvml.Options{PollTimeout: g.timeout})
	if err != nil {
		if g.mode == "on" {
			return gpuOpening{}, fmt.Errorf("--gpu=on: %w (library %s)", err, lib)
		}
		retry := g.retry > 0 && !errors.Is(err, nvml.ErrUnavailable)
		fields := []zap.Field{zap.Error(err), zap.String("library", lib), zap.String("driver_root", g.driverRoot)}
		if retry {
			fields = append(fields, zap.Duration("retry_every", g.retry))
		}
		switch {
		case errors.Is(err, nvml.ErrUnavailable):
			log.Warn("no GPU monitoring: this build has no NVML support", fields...)
		case nvml.NoDriver(err):
			log.Info("no GPU monitoring: NVML not available on this node", fields...)
		default:
			log.Error("no GPU monitoring: NVML failed", fields...)
		}
		return gpuOpening{unavailable: "GPU monitoring unavailable: " + err.Error(), retry: retry}, nil
	}
	return gpuOpening{mon: gpuMonitor(src, pol, g, lib, log), src: src}, nil
}

func gpuMonitor(src gpu.Source, pol gpu.Policy, g gpuFlags, lib string, log *zap.Logger) *gpu.Monitor {
	log.Info("GPU monitoring on", zap.Int("gpus", len(src.Devices())), zap.String("driver_version", src.DriverVersion()),
		zap.String("library", lib))
	return gpu.NewMonitor(src, pol, g.interval, log)
}

// retryGPU tries NVML every g.retry until it loads or ctx ends; it hands the monitor
// to attach and returns its source, for the caller to close once the agent stopped
// using it.
func retryGPU(ctx context.Context, g gpuFlags, log *zap.Logger, load func(string) (gpu.Source, error), attach func(*gpu.Monitor)) gpu.Source {
	pol, _ := g.policy() // checked by openGPU
	t := time.NewTicker(g.retry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		lib := nvml.LibraryPath(g.driverRoot) // a driver container may have just populated the root
		src, err := load(lib)
		if err != nil {
			log.Debug("NVML still unavailable", zap.Error(err), zap.String("library", lib))
			continue
		}
		attach(gpuMonitor(src, pol, g, lib, log))
		return src
	}
}

func newGPUCmd() *cobra.Command {
	var (
		g      gpuFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "gpu",
		Short: "Print a one-shot report of this node's GPUs and their health",
		Long: "Read every GPU once through NVML and print its health, temperature, power, memory and the reasons\n" +
			"behind its verdict. Exit status: 0 when no GPU is unhealthy, 1 when NVML is unavailable,\n" +
			"2 when a GPU is unhealthy.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pol, err := g.policy()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			print := func(r gpu.Report) error {
				if asJSON {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					return enc.Encode(r)
				}
				return r.WriteTable(out)
			}
			lib := nvml.LibraryPath(g.driverRoot)
			src, err := nvml.Load(lib, nvml.Options{PollTimeout: g.timeout})
			if err != nil {
				r := gpu.Report{Message: fmt.Sprintf("GPU monitoring unavailable: %v (library %s)", err, lib), GPUs: []gpu.GPUReport{}}
				if err := print(r); err != nil {
					return err
				}
				return exitError{1}
			}
			defer src.Close()
			mon := gpu.NewMonitor(src, pol, time.Hour, nil)
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout+time.Second)
			defer cancel()
			mon.Poll(ctx)
			snap := mon.Snapshot()
			if err := print(gpu.NewReport(snap, nil)); err != nil {
				return err
			}
			for _, st := range snap.GPUs {
				if st.Verdict.State == gpu.Unhealthy {
					return exitError{2}
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the format of /v1/gpus) instead of a table")
	g.register(cmd.Flags(), false)
	return cmd
}
