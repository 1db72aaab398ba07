package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"go.uber.org/zap"

	"github.com/probe-agent/probe-agent/gpu"
	"github.com/probe-agent/probe-agent/runtime"
	"github.com/probe-agent/probe-agent/service"
)

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
		if !cfg.CreatedByAgent() {
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
