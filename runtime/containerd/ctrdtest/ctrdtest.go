// Package ctrdtest starts a private containerd daemon for tests and builds container root
// filesystems from busybox-static and the project's own static binaries. Nothing is
// pulled: containers run from rootfs directories.
package ctrdtest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
)

// Require skips the test when containerd cannot run here (not root, binaries missing);
// with CI set, a missing component fails the test instead.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, bin := range []string{"containerd", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if _, err := busybox(); err != nil {
		missing = append(missing, "busybox-static")
	}
	if len(missing) == 0 {
		return
	}
	msg := "containerd tests need " + strings.Join(missing, ", ") + " (apt-get install containerd runc busybox-static; run as root)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func busybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if isStatic(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no static busybox")
}

// isStatic reports whether an ELF binary has no interpreter (a static binary).
func isStatic(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return !strings.Contains(string(data[:min(len(data), 4096)]), "/lib64/ld-linux")
}

// Daemon is a private containerd with its own root, state and socket.
type Daemon struct {
	Dir     string
	Address string
	config  string
	cmd     *exec.Cmd
	done    chan struct{}
	t       testing.TB
}

// Option adjusts the daemon's configuration.
type Option func(*config)

type config struct{ cri string }

// WithCRI enables the CRI plugin with the given TOML for its section
// [plugins."io.containerd.grpc.v1.cri"].
func WithCRI(section string) Option { return func(c *config) { c.cri = section } }

// WithKubeletCRI enables the CRI plugin as a kubelet needs it here: sandboxImage as the
// pause image (import it yourself: nothing is pulled), CNI configuration under cniDir,
// overlayfs, and restrict_oom_score_adj, without which runc fails on these VMs.
func WithKubeletCRI(sandboxImage, cniDir string) Option {
	return WithCRI(`sandbox_image = "` + sandboxImage + `"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "` + cniDir + `"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"`)
}

// Start starts a daemon under a temporary directory; it is stopped, with every
// container it ran, when the test ends.
func Start(t testing.TB, opts ...Option) *Daemon {
	t.Helper()
	Require(t)
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	// Unix socket paths are short; keep the directory near the root.
	dir, err := os.MkdirTemp("/tmp", "pa-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Dir: dir, Address: filepath.Join(dir, "containerd.sock"), config: filepath.Join(dir, "config.toml"), t: t}
	toml := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.Address, d.Address+".ttrpc", filepath.Join(dir, "opt"))
	if cfg.cri == "" {
		toml = strings.Replace(toml, "version = 2\n", "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n", 1)
	} else {
		toml += "[plugins.\"io.containerd.grpc.v1.cri\"]\n" + cfg.cri + "\n"
	}
	if err := os.WriteFile(d.config, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	d.privateRunc()
	d.start()
	t.Cleanup(d.cleanup)
	return d
}

func (d *Daemon) start() {
	d.t.Helper()
	log, err := os.OpenFile(filepath.Join(d.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	d.cmd = exec.Command("containerd", "--config", d.config)
	d.cmd.Env = append(os.Environ(), "PATH="+filepath.Join(d.Dir, "bin")+":"+os.Getenv("PATH"))
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	log.Close()
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(d.cmd, d.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := containerd.New(d.Address, containerd.WithTimeout(time.Second))
		if err == nil {
			ok, _ := c.IsServing(context.Background())
			c.Close()
			if ok {
				return
			}
		}
		select {
		case <-d.done:
			d.t.Fatalf("containerd exited: %s", d.Log())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("containerd did not start: %v\n%s", err, d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runcWrapper runs runc with its state under this daemon's directory: the shim gives
// runc --root /run/containerd/runc/<namespace>, shared by every containerd on the
// machine, so two daemons running a container of the same namespace and ID, or a test
// run killed before its cleanup, would make runc refuse the next one ("container with
// given ID already exists"). For the same reason it moves a new container's default
// cgroup, /<namespace>/<id>, under one of this daemon's own: two tests' containers "c"
// would share a cgroup, and one test's "kill every process of the container" would
// kill the other's. (Kubernetes pods' cgroups, under kubepods, are the kubelet's.)
const runcWrapper = `#!/bin/sh
for a do
	shift
	case "$prev" in --root) ns=$(basename "$a"); a="%[1]s/$ns" ;; --bundle|-b) bundle=$a ;; esac
	case "$a" in --root=*) ns=$(basename "${a#--root=}"); a="--root=%[1]s/$ns" ;; --bundle=*) bundle=${a#--bundle=} ;; esac
	set -- "$@" "$a"
	prev=$a
done
if [ -n "$bundle" ] && [ -n "$ns" ] && [ -f "$bundle/config.json" ]; then
	sed -i "s#\"cgroupsPath\":\"/$ns/#\"cgroupsPath\":\"/%[3]s/$ns/#" "$bundle/config.json"
fi
exec %[2]q "$@"
`

// cgroup is the cgroup under which the daemon's containers run (see runcWrapper).
func (d *Daemon) cgroup() string { return filepath.Base(d.Dir) }

// removeCgroups removes the daemon's cgroups, deepest first, in every hierarchy.
func (d *Daemon) removeCgroups() {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + d.cgroup())
	if st, err := os.Stat("/sys/fs/cgroup/" + d.cgroup()); err == nil && st.IsDir() {
		roots = append(roots, "/sys/fs/cgroup/"+d.cgroup())
	}
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = os.Remove(dirs[i])
		}
	}
}

// unmount detaches what is still mounted under the daemon's directory (the CRI
// plugin's sandbox /dev/shm mounts, which a stopped daemon leaves), deepest first, so
// that the directory can be removed.
func (d *Daemon) unmount() {
	info, _ := os.ReadFile("/proc/self/mountinfo")
	points := mountsUnder(string(info), d.Dir)
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// mountsUnder returns the mount points under dir listed in a mountinfo text, in its
// order (parents before children).
func mountsUnder(mountinfo, dir string) []string {
	var out []string
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// privateRunc puts a runc first on the daemon's PATH (the shims it starts inherit it)
// that keeps runc's state in the daemon's directory, removed with it.
func (d *Daemon) privateRunc() {
	d.t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		d.t.Fatal(err)
	}
	bin := filepath.Join(d.Dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		d.t.Fatal(err)
	}
	script := fmt.Sprintf(runcWrapper, filepath.Join(d.Dir, "runc"), runc, d.cgroup())
	if err := os.WriteFile(filepath.Join(bin, "runc"), []byte(script), 0o755); err != nil {
		d.t.Fatal(err)
	}
}

// Log returns what the daemon logged.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "containerd.log"))
	return string(b)
}

// Kill stops the daemon with SIGKILL; shims and containers keep running.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// Restart starts the daemon again after Kill.
func (d *Daemon) Restart() { d.start() }

// Client connects to the daemon.
func (d *Daemon) Client(t testing.TB) *containerd.Client {
	t.Helper()
	c, err := containerd.New(d.Address, containerd.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// cleanup kills and deletes every container, then stops the daemon and removes its files.
func (d *Daemon) cleanup() {
	select {
	case <-d.done:
		d.start()
	default:
	}
	if c, err := containerd.New(d.Address, containerd.WithTimeout(5*time.Second)); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		nss, _ := c.NamespaceService().List(ctx)
		for _, ns := range nss {
			nctx := namespaces.WithNamespace(ctx, ns)
			ctrs, _ := c.Containers(nctx)
			for _, ctr := range ctrs {
				if task, err := ctr.Task(nctx, nil); err == nil {
					_, _ = task.Delete(nctx, containerd.WithProcessKill)
				}
				_ = ctr.Delete(nctx)
			}
		}
		cancel()
		c.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.killStrays()
	d.removeCgroups()
	d.unmount()
	_ = os.RemoveAll(d.Dir)
}

// killStrays kills every process still tied to this daemon's directory (shims of
// tasks that were never fully created, their containers), so no test leaves
// processes behind.
func (d *Daemon) killStrays() {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if mentions(string(cmdline), d.Dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// mentions says whether a NUL-separated command line names dir or a path under it.
// Another daemon's directory may start with this one's name (/tmp/pa-ctrd-12 and
// /tmp/pa-ctrd-123): its processes are not this daemon's.
func mentions(cmdline, dir string) bool {
	return strings.Contains(cmdline, dir+"/") || strings.Contains(cmdline, dir+"\x00") || strings.HasSuffix(cmdline, dir)
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// BuildStatic builds a Go main package of this module as a static binary, once per
// test binary, and returns its path. pkg is relative to the module root, e.g.
// "cmd/sample-server".
func BuildStatic(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..", "..")
	dir, err := os.MkdirTemp("", "pa-bin-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, "./"+pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// Rootfs builds a root filesystem in a new temporary directory: busybox with its applet
// links in /bin, the given binaries copied into /bin under their base names, and the
// usual empty directories.
func Rootfs(t testing.TB, binaries ...string) string {
	t.Helper()
	bb, err := busybox()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, bb, filepath.Join(root, "bin", "busybox"))
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			_ = os.Symlink("busybox", filepath.Join(root, "bin", applet))
		}
	}
	for _, b := range binaries {
		copyFile(t, b, filepath.Join(root, "bin", filepath.Base(b)))
	}
	_ = os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	return root
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// RunContainer creates and starts a container from rootfs in namespace ns, as another
// tool (ctr, nerdctl) would, with labels and the given command.
func RunContainer(t testing.TB, client *containerd.Client, ns, id, rootfs string, labels map[string]string, args ...string) containerd.Task {
	t.Helper()
	return RunContainerSpec(t, client, ns, id, labels, oci.WithRootFSPath(rootfs), oci.WithDefaultPathEnv, oci.WithProcessArgs(args...))
}

// RunContainerSpec is RunContainer with the spec built from opts.
func RunContainerSpec(t testing.TB, client *containerd.Client, ns, id string, labels map[string]string, opts ...oci.SpecOpts) containerd.Task {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	c, err := client.NewContainer(ctx, id, containerd.WithContainerLabels(labels), containerd.WithNewSpec(opts...))
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return task
}
