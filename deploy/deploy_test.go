// Package deploy checks what ships the agent: the image's Dockerfile, the Kubernetes
// manifests, the alert rules and the Grafana dashboard. It is a module of its own so
// that its test-only dependencies (Kubernetes API types, kustomize, the Prometheus
// parser, BuildKit's Dockerfile parser) stay out of the agent's.
package deploy

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// image is deploy/Dockerfile, and agentBinary the agent built with its own build
// command; TestMain reads and builds them once.
var (
	image       *dockerfile
	agentBinary string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "probe-agent-deploy")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	image, err = parseDockerfile("Dockerfile")
	if err == nil {
		agentBinary = filepath.Join(dir, "probe-agent")
		err = image.build(agentBinary)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the agent as deploy/Dockerfile does:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// dockerfile is what the tests need of deploy/Dockerfile.
type dockerfile struct {
	args   map[string]string // ARG defaults before the first FROM
	stages []stage
}

type stage struct {
	name, base string
	runs       []string // RUN commands (shell form)
	copies     [][]string
	entrypoint []string
}

func parseDockerfile(path string) (*dockerfile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	df := &dockerfile{args: map[string]string{}}
	for _, n := range res.AST.Children {
		var words []string
		for a := n.Next; a != nil; a = a.Next {
			words = append(words, a.Value)
		}
		switch instr := strings.ToLower(n.Value); instr {
		case "arg":
			for _, w := range words {
				k, v, _ := strings.Cut(w, "=")
				if len(df.stages) == 0 {
					df.args[k] = v
				}
			}
		case "from":
			s := stage{base: os.Expand(words[0], func(k string) string { return df.args[k] })}
			if len(words) == 3 && strings.EqualFold(words[1], "as") {
				s.name = words[2]
			}
			df.stages = append(df.stages, s)
		case "run", "copy", "entrypoint":
			if len(df.stages) == 0 {
				return nil, fmt.Errorf("%s:%d: %s before FROM", path, n.StartLine, n.Value)
			}
			s := &df.stages[len(df.stages)-1]
			switch instr {
			case "run":
				s.runs = append(s.runs, strings.Join(words, " "))
			case "copy":
				s.copies = append(s.copies, append(n.Flags, words...))
			case "entrypoint":
				s.entrypoint = words
			}
		}
	}
	return df, nil
}

// buildCommand is the stage's RUN that builds the agent.
func (s stage) buildCommand() string {
	for _, r := range s.runs {
		if strings.Contains(r, "go build") && strings.Contains(r, "./cmd/probe-agent") {
			return r
		}
	}
	return ""
}

var outputFlag = regexp.MustCompile(`-o\s+(\S+)`)

// build runs the build stage's go build command here, from the repository root, with
// only the output path changed.
func (df *dockerfile) build(out string) error {
	cmd := df.stages[0].buildCommand()
	m := outputFlag.FindStringSubmatch(cmd)
	if cmd == "" || m == nil {
		return fmt.Errorf("the first stage has no `go build -o … ./cmd/probe-agent`")
	}
	sh := exec.Command("sh", "-c", strings.Replace(cmd, m[0], "-o "+out, 1))
	sh.Dir = ".."
	// The image builds with no GOFLAGS of its own: only the command's flags count.
	sh.Env = append(os.Environ(), "VERSION=deploy-test", "GOFLAGS=")
	if b, err := sh.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", cmd, err, b)
	}
	return nil
}

// glibcOf is the glibc of the base images the Dockerfile may use.
var glibcOf = map[string]string{
	"gcr.io/distroless/base-debian12": "2.36",
	"gcr.io/distroless/cc-debian12":   "2.36",
	"debian:bookworm-slim":            "2.36",
	"debian:12-slim":                  "2.36",
}

func TestDockerfileBuildsTheAgentForItsBase(t *testing.T) {
	if len(image.stages) != 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(image.stages))
	}
	build, final := image.stages[0], image.stages[1]

	// The builder's Go is the module's.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goLine == nil || build.base != "golang:"+string(goLine[1])+"-bookworm" {
		t.Errorf("build stage FROM %s, want golang:%s-bookworm", build.base, goLine[1])
	}
	cmd := build.buildCommand()
	for _, want := range []string{"CGO_ENABLED=1", "-tags no_dynamic_plugins", "-trimpath", "-X main.version="} {
		if !strings.Contains(cmd, want) {
			t.Errorf("build command lacks %q: %s", want, cmd)
		}
	}

	// The runtime stage takes the binary the build stage wrote and runs it.
	built := outputFlag.FindStringSubmatch(cmd)[1]
	var dest string
	for _, c := range final.copies {
		if slices.Contains(c, "--from="+build.name) && len(c) == 3 && c[1] == built {
			dest = c[2]
		}
	}
	if dest == "" || len(final.entrypoint) == 0 || final.entrypoint[0] != dest {
		t.Errorf("runtime stage copies %v, entrypoint %v: want %s copied from %s and run", final.copies, final.entrypoint, built, build.name)
	}

	// The binary needs no newer glibc than the runtime base has.
	have, ok := glibcOf[final.base]
	if !ok {
		t.Fatalf("runtime base %s: glibc unknown to this test", final.base)
	}
	need := glibcNeeded(t, agentBinary)
	if versionLess(have, need) {
		t.Errorf("the binary needs glibc %s, %s has %s", need, final.base, have)
	}
	t.Logf("binary needs glibc %s; %s has %s", need, final.base, have)

	// It starts, with NVML built in (it is left out without cgo or no_dynamic_plugins).
	out, err := exec.Command(agentBinary, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "probe-agent deploy-test ") {
		t.Fatalf("version: %v: %s", err, out)
	}
	out, _ = exec.Command(agentBinary, "gpu").CombinedOutput()
	if strings.Contains(string(out), "not built in") {
		t.Errorf("the image's binary has no NVML support: %s", out)
	}
}

// glibcNeeded returns the newest GLIBC_x.y symbol version the binary imports.
func glibcNeeded(t *testing.T, path string) string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.ImportedSymbols()
	if err != nil {
		t.Fatal(err)
	}
	newest := "0"
	for _, s := range syms {
		if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok && versionLess(newest, v) {
			newest = v
		}
	}
	if newest == "0" {
		t.Fatal("the binary imports nothing from glibc: not a cgo build")
	}
	return newest
}

// versionLess compares dotted version numbers.
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// runFlags lists the flags `probe-agent run --help` documents.
func runFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(agentBinary, "run", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("run --help: %v\n%s", err, out)
	}
	flags := map[string]bool{}
	re := regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9-]+)`)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			flags[m[1]] = true
		}
	}
	if !flags["containerd-address"] || !flags["gpu"] {
		t.Fatalf("run --help lists %v", flags)
	}
	return flags
}
