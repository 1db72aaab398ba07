package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/probe-agent/probe-agent/internal/await"
	"github.com/probe-agent/probe-agent/runtime/containerd/ctrdtest"
	"github.com/probe-agent/probe-agent/service"
)

// easFiles are the EAS documentation's service.json files and files like the ones EAS
// users have, kept as they are written.
func easFiles(t *testing.T) []string {
	files, err := filepath.Glob("../../testdata/eas/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no files in testdata/eas: %v", err)
	}
	return files
}

func TestValidateEASFiles(t *testing.T) {
	for _, f := range easFiles(t) {
		var out bytes.Buffer
		if code := run(context.Background(), []string{"validate", "--config", f}, &out, &out); code != 0 {
			t.Errorf("%s: exit %d:\n%s", f, code, &out)
			continue
		}
		if !strings.Contains(out.String(), "ignored (EAS platform field)") {
			t.Errorf("%s: no EAS platform field listed as ignored:\n%s", f, &out)
		}
		t.Logf("%s", &out)
	}
	// The EAS health-check document's example: a liveness check with success_threshold 2.
	var out bytes.Buffer
	code := run(context.Background(), []string{"validate", "--config", "../../testdata/eas/health-check.json"}, &out, &out)
	want := "../../testdata/eas/health-check.json: warning: containers[0].liveness_check.success_threshold: 2: Kubernetes requires 1 here"
	if code != 0 || !strings.Contains(out.String(), want) || !strings.HasSuffix(out.String(), ": ok (1 container, 1 warning)\n") {
		t.Errorf("exit %d:\n%s\nwant the warning and ok", code, &out)
	}
}

func TestValidateSuggestsTheCheckMeant(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "service.json")
	doc := `{"metadata":{"name":"s"},"containers":[{"command":"a","readiness_chek":{"tcp_socket":{"port":8000}}}]}`
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code := run(context.Background(), []string{"validate", "--config", cfg}, &out, &out)
	if want := cfg + `: containers[0].readiness_chek: unknown field; did you mean "readiness_check"?` + "\n"; code != 1 || out.String() != want {
		t.Errorf("exit %d, output %q; want 1 and %q", code, &out, want)
	}
}

// easRunChild, when set, makes TestEASFilesRun the half that runs the files: the other
// half runs it in a network namespace of its own, so that port 8000, which the files
// name, is free whatever else runs on the machine. It holds the sample server's path.
const easRunChild = "PROBE_AGENT_TEST_EAS_RUN"

// TestEASFilesRun runs each EAS file that names a command or script on the process
// runtime, the program replaced by a local server on the file's port and the checks as
// written, and waits for every check to pass.
func TestEASFilesRun(t *testing.T) {
	server := os.Getenv(easRunChild)
	if server == "" {
		server = ctrdtest.BuildStatic(t, "cmd/sample-server")
		if os.Geteuid() == 0 {
			inOwnNetns(t, server)
			return
		}
	}
	for _, f := range easFiles(t) {
		t.Run(filepath.Base(f), func(t *testing.T) { runEASFile(t, f, server) })
	}
}

// inOwnNetns runs TestEASFilesRun again in a new network namespace with loopback up.
func inOwnNetns(t *testing.T, server string) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed to run the EAS files on their own port 8000: %v", err)
	}
	cmd := exec.Command(unshare, "--net", "sh", "-c", `ip link set lo up && exec "$0" "$@"`,
		os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), easRunChild+"="+server)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the child did not run:\n%s", out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "--- ") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

func runEASFile(t *testing.T, file, server string) {
	orig, err := service.ParseFile(file, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	list, _ := doc["containers"].([]any)
	if len(list) == 0 {
		t.Skip("no containers to run (a processor-style service)")
	}
	for _, c := range list {
		c := c.(map[string]any)
		port, _ := c["port"].(float64)
		if port == 0 {
			port = 8000
		}
		delete(c, "script")
		c["command"] = server + " --bind 0.0.0.0 --port " + strconv.Itoa(int(port))
	}
	out, _ := json.Marshal(doc)
	cfg := filepath.Join(t.TempDir(), "service.json")
	if err := os.WriteFile(cfg, out, 0o644); err != nil {
		t.Fatal(err)
	}
	changed, err := service.ParseFile(cfg, service.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range orig.Containers {
		for _, pt := range service.ProbeTypes {
			if a, b := orig.Containers[i].Check(pt), changed.Containers[i].Check(pt); !reflect.DeepEqual(a, b) {
				t.Fatalf("containers[%d] %s check changed: %+v, was %+v", i, pt, b, a)
			}
		}
	}

	_, addr := agentProcess(t, cfg, t.TempDir())
	var got []map[string]any
	await.Until(t, 90*time.Second, "every container running, each check passed, ready", func() bool {
		got = containers(addr)
		if len(got) != len(orig.Containers) {
			return false
		}
		for i, c := range orig.Containers {
			s := got[i]
			if s["state"] != "running" || s["ready"] != true || s["restart_count"] != 0.0 {
				return false
			}
			probes, _ := s["probes"].(map[string]any)
			for _, pt := range service.ProbeTypes {
				if c.Check(pt) == nil {
					continue
				}
				p, _ := probes[pt.String()].(map[string]any)
				if p == nil || p["result"] != "success" {
					return false
				}
			}
		}
		return true
	}, func() string { return fmt.Sprint(got) })
}
