package service

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Validation reads the configuration and never changes it: defaults are applied
// before it (defaults.go), so that what is validated is what the agent runs.

var (
	// nameRE allows the Kubernetes form namespace/pod/container.
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,252}){0,2}$`)
	envRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	maxLimit = 1_000_000
)

// validate adds what is wrong to errs, and what loads but deserves a word to warns.
func (s *Service) validate(opts Options, errs, warns *ErrorList) {
	if s.Metadata.Name == "" {
		errs.add("metadata.name", "required (or the top-level name of a processor-style file)")
	}
	if len(s.Containers) == 0 {
		warns.add("containers", "none: the agent has nothing of this file's to run or probe (a processor-style service has no health checks)")
	}
	names := map[string]int{}
	for i := range s.Containers {
		c := &s.Containers[i]
		p := "containers[" + strconv.Itoa(i) + "]"
		c.validate(p, opts, errs, warns)
		if c.Name == "" {
			continue
		}
		if j, dup := names[c.Name]; dup {
			errs.add(p+".name", "duplicate container name %q (also containers[%d])", clip(c.Name), j)
		} else {
			names[c.Name] = i
		}
	}
}

// Validate checks one container entry on its own, as it appears under path, after
// SetDefaults. It is the check applied to every container of a service.json file.
func (c *Container) Validate(path string, opts Options) error {
	var errs ErrorList
	c.validate(path, opts, &errs, nil)
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// validate adds what is wrong to errs, and what loads but deserves a word to warns
// (nil: not wanted).
func (c *Container) validate(p string, opts Options, errs, warns *ErrorList) {
	if warns == nil {
		warns = new(ErrorList)
	}
	if c.Name != "" && !nameRE.MatchString(c.Name) {
		errs.add(p+".name", "%q is not a valid name (letters, digits, '_', '.', '-', or namespace/pod/container)", clip(c.Name))
	}
	for i, e := range c.Env {
		if !envRE.MatchString(e.Name) {
			errs.add(fmt.Sprintf("%s.env[%d].name", p, i), "%q is not a valid environment variable name", clip(e.Name))
		}
	}
	if c.Command != "" {
		if _, err := splitCommand(c.Command); err != nil {
			errs.add(p+".command", "%s", err)
		}
	}
	if c.Script != "" && c.Command != "" {
		errs.add(p+".script", "set command or script, not both")
	}
	if c.Port != 0 {
		validatePort(p+".port", c.Port, opts, errs)
	}
	if c.Rootfs != "" && c.Image != "" {
		errs.add(p+".rootfs", "set rootfs or image, not both")
	}
	switch c.RestartPolicy {
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		errs.add(p+".restart_policy", "%q is not one of Always, OnFailure, Never", clip(string(c.RestartPolicy)))
	}
	for _, t := range ProbeTypes {
		if ch := c.Check(t); ch != nil {
			cp := p + "." + t.Field()
			ch.validateMethod(cp, opts, errs)
			ch.validateTiming(cp, t, errs, warns)
		}
	}
}

func validatePort(p string, port int, opts Options, errs *ErrorList) {
	if port < 1 || port > 65535 {
		errs.add(p, "%d is outside 1-65535", port)
		return
	}
	if slices.Contains(opts.reserved(), port) {
		errs.add(p, "%d is reserved (reserved ports: %s)", port, joinInts(opts.reserved()))
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// validateMethod checks that a check has exactly one method, and that method's fields.
func (c *Check) validateMethod(p string, opts Options, errs *ErrorList) {
	var methods []string
	if c.HTTPGet != nil {
		methods = append(methods, MethodHTTPGet)
	}
	if c.TCPSocket != nil {
		methods = append(methods, MethodTCPSocket)
	}
	if c.Exec != nil {
		methods = append(methods, MethodExec)
	}
	if c.GRPC != nil {
		methods = append(methods, MethodGRPC)
	}
	switch len(methods) {
	case 0:
		errs.add(p, "exactly one of http_get, tcp_socket, exec, grpc is required, got none")
	case 1:
	default:
		errs.add(p, "exactly one of http_get, tcp_socket, exec, grpc is required, got %s", strings.Join(methods, " and "))
	}
	if h := c.HTTPGet; h != nil {
		validateHTTPGet(p+".http_get", h, opts, errs)
	}
	if s := c.TCPSocket; s != nil {
		validateMethodPort(p+".tcp_socket.port", s.Port, opts, errs)
		validateHost(p+".tcp_socket.host", s.Host, errs)
	}
	if g := c.GRPC; g != nil {
		validateMethodPort(p+".grpc.port", g.Port, opts, errs)
		validateHost(p+".grpc.host", g.Host, errs)
	}
	if e := c.Exec; e != nil && (len(e.Command) == 0 || e.Command[0] == "") {
		errs.add(p+".exec.command", "must name a command")
	}
}

// validateMethodPort checks a method's port; after SetDefaults it is 0 only when
// neither the check nor the container names one.
func validateMethodPort(p string, port int, opts Options, errs *ErrorList) {
	if port == 0 {
		errs.add(p, "required (the container has no port to default to)")
		return
	}
	validatePort(p, port, opts, errs)
}

func validateHTTPGet(p string, h *HTTPGet, opts Options, errs *ErrorList) {
	validateMethodPort(p+".port", h.Port, opts, errs)
	if !strings.HasPrefix(h.Path, "/") {
		errs.add(p+".path", "%q must start with '/'", clip(h.Path))
	}
	if h.Scheme != "HTTP" && h.Scheme != "HTTPS" {
		errs.add(p+".scheme", "%q is not HTTP or HTTPS", clip(h.Scheme))
	}
	validateHost(p+".host", h.Host, errs)
	for i, hd := range h.HTTPHeaders {
		if !httpguts.ValidHeaderFieldName(hd.Name) {
			errs.add(fmt.Sprintf("%s.http_headers[%d].name", p, i), "%q is not a valid HTTP header name", clip(hd.Name))
		}
		if strings.ContainsAny(hd.Value, "\r\n\x00") {
			errs.add(fmt.Sprintf("%s.http_headers[%d].value", p, i), "must not contain CR, LF or NUL")
		}
	}
}

// validateTiming checks a check's delays, durations, thresholds and grace period.
func (c *Check) validateTiming(p string, t ProbeType, errs, warns *ErrorList) {
	if c.InitialDelaySeconds < 0 {
		errs.add(p+".initial_delay_seconds", "must not be negative")
	} else if c.InitialDelaySeconds > 0 && c.InitialDelaySeconds.D() < MinDuration {
		errs.add(p+".initial_delay_seconds", "must be 0 or at least 0.01 (10 ms)")
	}
	positiveDuration := func(field string, v Seconds) {
		if v <= 0 {
			errs.add(p+"."+field, "must be positive")
		} else if v.D() < MinDuration {
			errs.add(p+"."+field, "must be at least 0.01 (10 ms)")
		}
	}
	positiveDuration("period_seconds", c.PeriodSeconds)
	positiveDuration("timeout_seconds", c.TimeoutSeconds)
	threshold := func(field string, v int) {
		if v < 1 {
			errs.add(p+"."+field, "must be at least 1")
		} else if v > maxLimit {
			errs.add(p+"."+field, "must be at most %d", maxLimit)
		}
	}
	threshold("success_threshold", c.SuccessThreshold)
	threshold("failure_threshold", c.FailureThreshold)
	if t != Readiness && c.SuccessThreshold > 1 && c.SuccessThreshold <= maxLimit {
		// EAS's own health-check example has one; the count is honoured as written.
		warns.add(p+".success_threshold", "%d: Kubernetes requires 1 here; probe-agent honours it as written (%d successes in a row before the check passes; a failed %s check restarts the container anyway)",
			c.SuccessThreshold, c.SuccessThreshold, t)
	}
	if g := c.TerminationGracePeriodSeconds; g != nil {
		switch {
		case t == Readiness:
			errs.add(p+".termination_grace_period_seconds", "not allowed on readiness checks (a readiness failure stops nothing)")
		case *g <= 0:
			errs.add(p+".termination_grace_period_seconds", "must be positive")
		}
	}
}

func validateHost(p, host string, errs *ErrorList) {
	if host != "" && strings.ContainsAny(host, "/?#@ \t\r\n") {
		errs.add(p, "%q must be a host name or IP address only", clip(host))
	}
}
