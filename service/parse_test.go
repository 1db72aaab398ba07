package service

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseEASExampleUnchanged(t *testing.T) {
	t.Parallel()
	s, err := ParseFile("../testdata/eas-example.json", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Metadata.Name != "flask_demo" {
		t.Errorf("metadata = %+v", s.Metadata)
	}
	if want := []string{"metadata.instance", "metadata.enable_webservice", "cloud"}; !reflect.DeepEqual(s.Ignored, want) {
		t.Errorf("ignored = %q, want %q", s.Ignored, want)
	}
	c := s.Containers[0]
	if c.Name != "flask_demo-0" {
		t.Errorf("default name = %q, want flask_demo-0", c.Name)
	}
	if c.RestartPolicy != RestartAlways {
		t.Errorf("restart policy = %q, want Always", c.RestartPolicy)
	}
	if want := []string{"python3", "app.py", "--port", "8000"}; !reflect.DeepEqual(c.Args, want) {
		t.Errorf("args = %q, want %q", c.Args, want)
	}
	if got := c.Environ(); !reflect.DeepEqual(got, []string{"MODEL_DIR=/models", "WORKERS=2"}) {
		t.Errorf("env = %q", got)
	}
	st := c.StartupCheck
	if st.Method() != MethodHTTPGet || st.HTTPGet.Scheme != "HTTP" || st.FailureThreshold != 24 ||
		st.InitialDelaySeconds.D() != 5*time.Second || st.TimeoutSeconds.D() != 2*time.Second {
		t.Errorf("startup = %+v %+v", st, st.HTTPGet)
	}
	lv := c.LivenessCheck
	if lv.Method() != MethodTCPSocket || lv.TCPSocket.Port != 8000 || lv.SuccessThreshold != 1 || lv.InitialDelaySeconds != 0 {
		t.Errorf("liveness = %+v", lv)
	}
	if c.ReadinessCheck.PeriodSeconds.D() != 5*time.Second {
		t.Errorf("readiness period = %v", c.ReadinessCheck.PeriodSeconds.D())
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	doc := `{"metadata":{"name":"svc"},"containers":[{"command":"srv","port":8000,
		"liveness_check":{"tcp_socket":{}},"readiness_check":{"http_get":{}},"startup_check":{"exec":{"command":["true"]}}}]}`
	s, err := Parse([]byte(doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Containers[0]
	for _, tc := range []struct {
		t           ProbeType
		failure     int
		method      string
		periodDelay [3]time.Duration
	}{
		{Liveness, 1, MethodTCPSocket, [3]time.Duration{10 * time.Second, time.Second, 0}},
		{Readiness, 3, MethodHTTPGet, [3]time.Duration{10 * time.Second, time.Second, 0}},
		{Startup, 1, MethodExec, [3]time.Duration{10 * time.Second, time.Second, 0}},
	} {
		ch := c.Check(tc.t)
		if ch.FailureThreshold != tc.failure || ch.SuccessThreshold != 1 || ch.Method() != tc.method ||
			ch.PeriodSeconds.D() != tc.periodDelay[0] || ch.TimeoutSeconds.D() != tc.periodDelay[1] ||
			ch.InitialDelaySeconds.D() != tc.periodDelay[2] {
			t.Errorf("%s defaults: %+v", tc.t, ch)
		}
	}
	if h := c.ReadinessCheck.HTTPGet; h.Port != 8000 || h.Path != "/" || h.Scheme != "HTTP" {
		t.Errorf("http_get defaults: %+v", h)
	}
	if c.LivenessCheck.TCPSocket.Port != 8000 {
		t.Errorf("tcp_socket port did not default to the container port")
	}
	if got := DefaultCheck(Readiness).FailureThreshold; got != 3 {
		t.Errorf("DefaultCheck(readiness).FailureThreshold = %d", got)
	}
}

func TestFractionalDurations(t *testing.T) {
	t.Parallel()
	doc := `{"metadata":{"name":"svc"},"containers":[{"command":"srv",
		"liveness_check":{"tcp_socket":{"port":80},"period_seconds":0.25,"timeout_seconds":0.01,"initial_delay_seconds":1.5}}]}`
	s, err := Parse([]byte(doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := s.Containers[0].LivenessCheck
	if l.PeriodSeconds.D() != 250*time.Millisecond || l.TimeoutSeconds.D() != 10*time.Millisecond ||
		l.InitialDelaySeconds.D() != 1500*time.Millisecond {
		t.Errorf("durations = %v %v %v", l.PeriodSeconds.D(), l.TimeoutSeconds.D(), l.InitialDelaySeconds.D())
	}
}

// wrap builds a one-container service around a container body.
func wrap(container string) string {
	return `{"metadata":{"name":"svc"},"containers":[` + container + `]}`
}

func TestValidationRules(t *testing.T) {
	t.Parallel()
	tcp := `"tcp_socket":{"port":8000}`
	cases := []struct {
		name, doc, path, msg string
		opts                 Options
	}{
		{"unknown field", wrap(`{"command":"a","colour":1}`), "containers[0].colour", "unknown field", Options{}},
		{"unknown field in check", wrap(`{"command":"a","liveness_check":{` + tcp + `,"periodSeconds":1}}`), "containers[0].liveness_check.periodSeconds", "unknown field", Options{}},
		{"unknown top-level field", `{"metadata":{"name":"s"},"containers":[{"command":"a"}],"extra":true}`, "extra", "unknown field", Options{}},
		{"duplicate key", wrap(`{"command":"a","port":8000,"port":8001}`), "containers[0].port", "duplicate key", Options{}},
		{"duplicate key in metadata", `{"metadata":{"name":"s","name":"t"},"containers":[{"command":"a"}]}`, "metadata.name", "duplicate key", Options{}},
		{"no method", wrap(`{"command":"a","liveness_check":{"period_seconds":1}}`), "containers[0].liveness_check", "got none", Options{}},
		{"two methods", wrap(`{"command":"a","liveness_check":{` + tcp + `,"exec":{"command":["x"]}}}`), "containers[0].liveness_check", "got tcp_socket and exec", Options{}},
		{"port zero without container port", wrap(`{"command":"a","readiness_check":{"http_get":{}}}`), "containers[0].readiness_check.http_get.port", "required", Options{}},
		{"port too large", wrap(`{"command":"a","liveness_check":{"tcp_socket":{"port":70000}}}`), "containers[0].liveness_check.tcp_socket.port", "outside 1-65535", Options{}},
		{"negative port", wrap(`{"command":"a","port":-1}`), "containers[0].port", "outside 1-65535", Options{}},
		{"reserved container port", wrap(`{"command":"a","port":8080}`), "containers[0].port", "8080 is reserved", Options{}},
		{"reserved check port", wrap(`{"command":"a","liveness_check":{"tcp_socket":{"port":9090}}}`), "containers[0].liveness_check.tcp_socket.port", "9090 is reserved", Options{}},
		{"custom reserved port", wrap(`{"command":"a","port":7000}`), "containers[0].port", "7000 is reserved", Options{ReservedPorts: []int{7000}}},
		{"zero period", wrap(`{"command":"a","liveness_check":{` + tcp + `,"period_seconds":0}}`), "containers[0].liveness_check.period_seconds", "must be positive", Options{}},
		{"negative timeout", wrap(`{"command":"a","liveness_check":{` + tcp + `,"timeout_seconds":-2}}`), "containers[0].liveness_check.timeout_seconds", "must be positive", Options{}},
		{"period under 10ms", wrap(`{"command":"a","liveness_check":{` + tcp + `,"period_seconds":0.005}}`), "containers[0].liveness_check.period_seconds", "at least 0.01", Options{}},
		{"zero failure threshold", wrap(`{"command":"a","readiness_check":{` + tcp + `,"failure_threshold":0}}`), "containers[0].readiness_check.failure_threshold", "at least 1", Options{}},
		{"zero success threshold", wrap(`{"command":"a","readiness_check":{` + tcp + `,"success_threshold":0}}`), "containers[0].readiness_check.success_threshold", "at least 1", Options{}},
		{"fractional threshold", wrap(`{"command":"a","readiness_check":{` + tcp + `,"failure_threshold":1.5}}`), "containers[0].readiness_check.failure_threshold", "must be an integer", Options{}},
		{"negative delay", wrap(`{"command":"a","startup_check":{` + tcp + `,"initial_delay_seconds":-1}}`), "containers[0].startup_check.initial_delay_seconds", "must not be negative", Options{}},
		{"huge delay", wrap(`{"command":"a","startup_check":{` + tcp + `,"initial_delay_seconds":1e300}}`), "containers[0].startup_check.initial_delay_seconds", "out of range", Options{}},
		{"empty exec", wrap(`{"command":"a","liveness_check":{"exec":{"command":[]}}}`), "containers[0].liveness_check.exec.command", "must name a command", Options{}},
		{"exec missing command", wrap(`{"command":"a","liveness_check":{"exec":{}}}`), "containers[0].liveness_check.exec.command", "must name a command", Options{}},
		{"bad scheme", wrap(`{"command":"a","readiness_check":{"http_get":{"port":80,"scheme":"ftp"}}}`), "containers[0].readiness_check.http_get.scheme", "not HTTP or HTTPS", Options{}},
		{"bad header name", wrap(`{"command":"a","readiness_check":{"http_get":{"port":80,"http_headers":[{"name":"Bad Header","value":"x"}]}}}`), "containers[0].readiness_check.http_get.http_headers[0].name", "not a valid HTTP header name", Options{}},
		{"header value newline", wrap(`{"command":"a","readiness_check":{"http_get":{"port":80,"http_headers":[{"name":"X","value":"a\nb"}]}}}`), "containers[0].readiness_check.http_get.http_headers[0].value", "CR, LF", Options{}},
		{"bad path", wrap(`{"command":"a","readiness_check":{"http_get":{"port":80,"path":"health"}}}`), "containers[0].readiness_check.http_get.path", "must start with '/'", Options{}},
		{"bad host", wrap(`{"command":"a","readiness_check":{"http_get":{"port":80,"host":"http://x/"}}}`), "containers[0].readiness_check.http_get.host", "host name or IP", Options{}},
		{"duplicate names", `{"metadata":{"name":"s"},"containers":[{"name":"a","command":"x"},{"name":"a","command":"y"}]}`, "containers[1].name", `duplicate container name "a" (also containers[0])`, Options{}},
		{"duplicate default name", `{"metadata":{"name":"s"},"containers":[{"command":"x"},{"name":"s-0","command":"y"}]}`, "containers[1].name", "duplicate container name", Options{}},
		{"bad name", wrap(`{"name":"a b","command":"x"}`), "containers[0].name", "not a valid name", Options{}},
		{"bad restart policy", wrap(`{"command":"x","restart_policy":"always"}`), "containers[0].restart_policy", "not one of Always", Options{}},
		{"unbalanced quote", wrap(`{"command":"python \"app.py"}`), "containers[0].command", "cannot split", Options{}},
		{"shell operator", wrap(`{"command":"python app.py | tee log"}`), "containers[0].command", "not run through a shell", Options{}},
		{"wrong type", wrap(`{"command":["a"]}`), "containers[0].command", "must be a string, got array", Options{}},
		{"bad env name", wrap(`{"command":"a","env":[{"name":"1X","value":""}]}`), "containers[0].env[0].name", "not a valid environment", Options{}},
		{"grace on readiness", wrap(`{"command":"a","readiness_check":{` + tcp + `,"termination_grace_period_seconds":3}}`), "containers[0].readiness_check.termination_grace_period_seconds", "not allowed", Options{}},
		{"zero grace", wrap(`{"command":"a","liveness_check":{` + tcp + `,"termination_grace_period_seconds":0}}`), "containers[0].liveness_check.termination_grace_period_seconds", "must be positive", Options{}},
		{"misspelt check", wrap(`{"command":"a","readiness_chek":{` + tcp + `}}`), "containers[0].readiness_chek", `unknown field; did you mean "readiness_check"?`, Options{}},
		{"camel-case timing", wrap(`{"command":"a","liveness_check":{` + tcp + `,"periodSeconds":1}}`), "containers[0].liveness_check.periodSeconds", `did you mean "period_seconds"?`, Options{}},
		{"misspelt platform field", `{"metadata":{"name":"s","memroy":4000},"containers":[{"command":"a"}]}`, "metadata.memroy", `did you mean "memory"?`, Options{}},
		{"command and script", wrap(`{"command":"a","script":"b && c"}`), "containers[0].script", "set command or script, not both", Options{}},
		{"platform field type", `{"metadata":{"name":"s","cpu":"two"},"containers":[{"command":"a"}]}`, "metadata.cpu", "must be number, got string", Options{}},
		{"platform integer", `{"metadata":{"name":"s","memory":1.5},"containers":[{"command":"a"}]}`, "metadata.memory", "must be integer, got number 1.5", Options{}},
		{"platform array element", `{"metadata":{"name":"s"},"cloud":{"computing":{"instances":[{"type":1}]}},"containers":[{"command":"a"}]}`, "cloud.computing.instances[0].type", "must be string, got number", Options{}},
		{"unknown in a platform section", `{"metadata":{"name":"s"},"cloud":{"computing":{"instance_typ":"x"}},"containers":[{"command":"a"}]}`, "cloud.computing.instance_typ", `did you mean "instance_type"?`, Options{}},
		{"platform duplicate key", `{"metadata":{"name":"s"},"storage":[{"mount_path":"/a","mount_path":"/b"}],"containers":[{"command":"a"}]}`, "storage[0].mount_path", "duplicate key", Options{}},
		{"no name", `{"metadata":{},"containers":[{"command":"a"}]}`, "metadata.name", "required (or the top-level name", Options{}},
		{"top level not object", `[1,2]`, "", "must be an object", Options{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.doc), tc.opts)
			if err == nil {
				t.Fatalf("no error; want %s: %s", tc.path, tc.msg)
			}
			for _, e := range Errors(err) {
				if e.Path == tc.path && strings.Contains(e.Msg, tc.msg) {
					return
				}
			}
			t.Fatalf("want %s: ...%s..., got:\n%v", tc.path, tc.msg, err)
		})
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	t.Parallel()
	_, err := ParseFile("../testdata/invalid-five.json", Options{})
	errs := Errors(err)
	want := []string{
		"containers[0].port: 8080 is reserved (reserved ports: 8080, 9090)",
		"containers[0].liveness_check: exactly one of http_get, tcp_socket, exec, grpc is required, got http_get and tcp_socket",
		"containers[0].readiness_check.period_seconds: must be positive",
		"containers[0].startup_check.exec.command: must name a command",
		"containers[0].startup_check.initial_delay_seconds: must not be negative",
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		if errs[i].Error() != w {
			t.Errorf("error %d = %q, want %q", i, errs[i].Error(), w)
		}
	}
	if !strings.HasPrefix(err.Error(), "../testdata/invalid-five.json: ") {
		t.Errorf("file error does not name the file: %v", err)
	}
}

func TestSyntaxErrorsLocated(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{"{\n  \"metadata\": {\n    \"name\": \"x\",\n  }\n}", "{", `{"a":1} {"b":2}`, ""} {
		_, err := Parse([]byte(doc), Options{})
		if err == nil || !strings.Contains(err.Error(), "invalid JSON at line") {
			t.Errorf("Parse(%q) = %v, want a located syntax error", doc, err)
		}
	}
	_, err := Parse([]byte("{\n  \"metadata\": {\n    \"name\": \"x\",\n  }\n}"), Options{})
	if !strings.Contains(err.Error(), "line 4") {
		t.Errorf("syntax error not on line 4: %v", err)
	}
}

func TestDeepNestingRejected(t *testing.T) {
	t.Parallel()
	doc := strings.Repeat("[", 10000) + strings.Repeat("]", 10000)
	if _, err := Parse([]byte(doc), Options{}); err == nil || !strings.Contains(err.Error(), "nesting deeper") {
		t.Fatalf("got %v", err)
	}
}

func TestContainerValidate(t *testing.T) {
	t.Parallel()
	c := Container{LivenessCheck: &Check{TCPSocket: &TCPSocket{Port: 80}, PeriodSeconds: Seconds(time.Second),
		TimeoutSeconds: Seconds(time.Second), SuccessThreshold: 1, FailureThreshold: 0}}
	err := c.Validate("label", Options{})
	if err == nil || !strings.Contains(err.Error(), "label.liveness_check.failure_threshold: must be at least 1") {
		t.Fatalf("got %v", err)
	}
}

// TestValidateChangesNothing checks that validation only reads: defaults come from
// SetDefaults, so that what is validated is exactly what runs.
func TestValidateChangesNothing(t *testing.T) {
	t.Parallel()
	build := func() Container {
		return Container{Command: "srv --port 8000", Port: 8000,
			LivenessCheck:  &Check{HTTPGet: &HTTPGet{Scheme: "https"}},
			ReadinessCheck: &Check{TCPSocket: &TCPSocket{}, PeriodSeconds: Seconds(time.Second)}}
	}
	c, untouched := build(), build()
	if err := c.Validate("c", Options{}); err == nil {
		t.Fatal("a container without defaults validated")
	}
	if !reflect.DeepEqual(c, untouched) {
		t.Fatalf("Validate changed the container:\n%+v\nwas\n%+v", c, untouched)
	}
	c.SetDefaults()
	if c.RestartPolicy != RestartAlways || !reflect.DeepEqual(c.Args, []string{"srv", "--port", "8000"}) ||
		c.LivenessCheck.HTTPGet.Port != 8000 || c.LivenessCheck.HTTPGet.Path != "/" || c.LivenessCheck.HTTPGet.Scheme != "HTTPS" ||
		c.ReadinessCheck.TCPSocket.Port != 8000 {
		t.Fatalf("defaults %+v %+v", c, c.LivenessCheck.HTTPGet)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../testdata/*.json")
	eas, _ := filepath.Glob("../testdata/eas/*.json")
	for _, name := range append(files, eas...) {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, Options{})
		if err != nil {
			for _, e := range Errors(err) {
				if e.Msg == "" {
					t.Fatalf("empty error message in %v", err)
				}
			}
			return
		}
		if len(s.Containers) == 0 && (len(s.Warnings) == 0 || s.Warnings[0].Path != "containers") {
			t.Fatalf("a service without containers, without the warning: %v", s.Warnings)
		}
		for _, c := range s.Containers {
			if c.Name == "" {
				t.Fatal("valid container without a name")
			}
			for _, pt := range ProbeTypes {
				if ch := c.Check(pt); ch != nil && (ch.Method() == "" || ch.PeriodSeconds.D() < MinDuration || ch.FailureThreshold < 1) {
					t.Fatalf("invalid %s check accepted: %+v", pt, ch)
				}
			}
		}
	})
}

func TestParseContainerLabelForm(t *testing.T) {
	t.Parallel()
	c, err := ParseContainer([]byte(`{"port":8000,"restart_policy":"OnFailure","liveness_check":{"http_get":{"path":"/health"}}}`), "label", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.LivenessCheck.HTTPGet.Port != 8000 || c.RestartPolicy != RestartOnFailure || c.LivenessCheck.FailureThreshold != 1 {
		t.Fatalf("%+v", c)
	}
	_, err = ParseContainer([]byte(`{"liveness_check":{"tcp_socket":{"port":1}},"livenes_check":{}}`), `label "probe-agent.io/checks"`, Options{})
	if err == nil || !strings.Contains(err.Error(), `label "probe-agent.io/checks".livenes_check: unknown field`) {
		t.Fatalf("got %v", err)
	}
	_, err = ParseContainer([]byte(`{`), "label", Options{})
	if err == nil || !strings.HasPrefix(err.Error(), "label: invalid JSON") {
		t.Fatalf("got %v", err)
	}
}

func TestParseContainersAnnotationForm(t *testing.T) {
	t.Parallel()
	m, err := ParseContainers([]byte(`{"app":{"readiness_check":{"tcp_socket":{"port":8000}}},"side":{"liveness_check":{"exec":{"command":["true"]}}}}`), "annotation", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m["app"].Name != "app" || m["app"].ReadinessCheck.FailureThreshold != 3 || m["side"].LivenessCheck.Method() != MethodExec {
		t.Fatalf("%+v", m)
	}
	_, err = ParseContainers([]byte(`{"app":{"readiness_check":{"tcp_socket":{"port":0}}}}`), "annotation", Options{})
	if err == nil || !strings.Contains(err.Error(), `annotation["app"].readiness_check.tcp_socket.port: required`) {
		t.Fatalf("got %v", err)
	}
	_, err = ParseContainers([]byte(`{"app":{},"app":{}}`), "annotation", Options{})
	if err == nil || !strings.Contains(err.Error(), `annotation["app"]: duplicate key`) {
		t.Fatalf("got %v", err)
	}
	if _, err := ParseContainers([]byte(`[]`), "annotation", Options{}); err == nil {
		t.Fatal("array accepted")
	}
}

func TestKubernetesNamesAndRootfs(t *testing.T) {
	t.Parallel()
	if _, err := Parse([]byte(wrap(`{"name":"team-a/web-0/app","command":"x"}`)), Options{}); err != nil {
		t.Fatalf("namespace/pod/container name rejected: %v", err)
	}
	for _, bad := range []string{"a//b", "/a", "a/b/c/d"} {
		if _, err := Parse([]byte(wrap(`{"name":"`+bad+`","command":"x"}`)), Options{}); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	_, err := Parse([]byte(wrap(`{"command":"x","rootfs":"/r","image":"i"}`)), Options{})
	if err == nil || !strings.Contains(err.Error(), "rootfs or image, not both") {
		t.Fatalf("got %v", err)
	}
}

// hostileDoc is a container entry with n unknown fields of long names and values.
func hostileDoc(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"liveness_check":{"tcp_socket":{"port":80}}`)
	for i := range n {
		fmt.Fprintf(&b, `,"unknown_%d_%s":"%s"`, i, strings.Repeat("k", 200), strings.Repeat("v", 200))
	}
	b.WriteString("}")
	return []byte(b.String())
}

// TestHostileInputGetsABoundedReport: however many mistakes a document holds, the
// report names the first MaxErrors, counts the rest, and echoes no long key or value.
func TestHostileInputGetsABoundedReport(t *testing.T) {
	t.Parallel()
	_, err := ParseContainer(hostileDoc(25_000), "label", Options{})
	l := Errors(err)
	if len(l) != MaxErrors+1 || l[MaxErrors].Msg != "… and 24900 more errors" {
		t.Fatalf("%d errors, last %v; want %d and a count of the rest", len(l), l[len(l)-1], MaxErrors)
	}
	for _, e := range l[:MaxErrors] {
		if len(e.Error()) > 200 || !strings.HasSuffix(e.Path, "…") || e.Msg != "unknown field" {
			t.Fatalf("error %q echoes too much of the document", e.Error())
		}
	}
	_, err = Parse([]byte(`{"metadata":{"name":"x"},"containers":[{"name":"`+strings.Repeat("n", 1000)+`",
		"restart_policy":"`+strings.Repeat("r", 1000)+`","liveness_check":{"tcp_socket":{"port":80},"period_seconds":1`+strings.Repeat("0", 1000)+`}}]}`), Options{})
	for _, e := range Errors(err) {
		if len(e.Error()) > 200 {
			t.Fatalf("error %q echoes too much of the document", e.Error())
		}
	}
	if n := len(Errors(err)); n != 3 {
		t.Fatalf("%d errors, want 3: %v", n, err)
	}
}

// BenchmarkManyErrors shows that reporting is linear in the number of mistakes: the
// time per error stays flat from 1,000 to 100,000 errors.
func BenchmarkManyErrors(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		doc := hostileDoc(n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				_, _ = ParseContainer(doc, "label", Options{})
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/error")
		})
	}
}

func TestWarningsLoad(t *testing.T) {
	t.Parallel()
	s, err := Parse([]byte(wrap(`{"command":"a","liveness_check":{"tcp_socket":{"port":8000},"success_threshold":2},
		"startup_check":{"tcp_socket":{"port":8000},"success_threshold":3},"readiness_check":{"tcp_socket":{"port":8000},"success_threshold":2}}`)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range s.Warnings {
		got = append(got, w.Path)
	}
	if want := []string{"containers[0].liveness_check.success_threshold", "containers[0].startup_check.success_threshold"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("warnings at %q, want %q:\n%v", got, want, s.Warnings)
	}
	if !strings.Contains(s.Warnings[0].Msg, "Kubernetes requires 1 here") {
		t.Errorf("warning %q", s.Warnings[0])
	}
	if s.Containers[0].LivenessCheck.SuccessThreshold != 2 {
		t.Errorf("success threshold not honoured as written: %+v", s.Containers[0].LivenessCheck)
	}

	s, err = Parse([]byte(`{"name":"processor_demo","processor":"tensorflow_cpu_1.15","model_path":"oss://b/m/","metadata":{"instance":1,"cpu":1}}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Metadata.Name != "processor_demo" || len(s.Warnings) != 1 || s.Warnings[0].Path != "containers" {
		t.Errorf("processor-style file: name %q, warnings %v", s.Metadata.Name, s.Warnings)
	}
	if want := []string{"processor", "model_path", "metadata.instance", "metadata.cpu"}; !reflect.DeepEqual(s.Ignored, want) {
		t.Errorf("ignored %q, want %q", s.Ignored, want)
	}
}

func TestScriptRunsThroughAShell(t *testing.T) {
	t.Parallel()
	s, err := Parse([]byte(wrap(`{"script":"cd /app && python app.py"}`)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/bin/sh", "-c", "cd /app && python app.py"}; !reflect.DeepEqual(s.Containers[0].Args, want) {
		t.Errorf("args %q, want %q", s.Containers[0].Args, want)
	}
}
