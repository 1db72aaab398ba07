// Package service holds the user's configuration: the PAI-EAS service.json health-check
// format, its defaults, a strict parser and validation whose every error names its JSON path.
package service

import (
	"strconv"
	"time"
)

// Service is one service.json document: the fields the agent uses. The EAS platform
// fields it does not use (Schema) are checked and listed in Ignored.
type Service struct {
	Metadata Metadata `json:"metadata"`
	// Name is the service name of a processor-style EAS file, used when
	// Metadata.Name is empty.
	Name       string      `json:"name,omitempty"`
	Containers []Container `json:"containers"`

	// Ignored lists the JSON paths of the EAS platform fields in the document, which
	// the agent accepts and does not use; filled by Parse.
	Ignored []string `json:"-"`
	// Warnings are what the document says that loads but deserves a word (a
	// threshold Kubernetes would refuse, nothing to probe); filled by Parse.
	Warnings ErrorList `json:"-"`
}

// Metadata is the EAS service metadata; the agent uses Name.
type Metadata struct {
	Name string `json:"name"`
}

// Container is one container entry with its checks.
type Container struct {
	// Name is an extension to the EAS format; it defaults to <metadata.name>-<index>.
	Name  string `json:"name,omitempty"`
	Image string `json:"image,omitempty"`
	// Rootfs is an extension: a root filesystem directory the containerd runtime runs
	// the container from, with Command, Env and Port.
	Rootfs string   `json:"rootfs,omitempty"`
	Env    []EnvVar `json:"env,omitempty"`
	// Command is split into words and run without a shell.
	Command string `json:"command,omitempty"`
	// Script, EAS's other form of the entry command, is run by /bin/sh -c.
	Script string `json:"script,omitempty"`
	Port   int    `json:"port,omitempty"`
	// RestartPolicy is an extension to the EAS format; it defaults to Always.
	RestartPolicy  RestartPolicy `json:"restart_policy,omitempty"`
	LivenessCheck  *Check        `json:"liveness_check,omitempty"`
	ReadinessCheck *Check        `json:"readiness_check,omitempty"`
	StartupCheck   *Check        `json:"startup_check,omitempty"`
	// ExecRunner false runs the container's exec checks through containerd exec, each
	// command on its own, instead of on the agent's runner in the container (an
	// extension; containerd runtime only).
	ExecRunner *bool `json:"exec_runner,omitempty"`

	// Args is Command split by shell-word rules, or Script run by /bin/sh -c; filled
	// by Parse.
	Args []string `json:"-"`
}

// EnvVar is one environment variable of a container.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Check returns the container's check of the given type, or nil.
func (c *Container) Check(t ProbeType) *Check {
	switch t {
	case Liveness:
		return c.LivenessCheck
	case Readiness:
		return c.ReadinessCheck
	case Startup:
		return c.StartupCheck
	}
	return nil
}

// CreatedByAgent reports whether the entry describes a container for the agent to
// create and run (it names a rootfs or an image), rather than checks for a container
// someone else runs.
func (c *Container) CreatedByAgent() bool { return c.Rootfs != "" || c.Image != "" }

// Environ returns the container's environment as KEY=VALUE strings.
func (c *Container) Environ() []string {
	env := make([]string, 0, len(c.Env))
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

// RestartPolicy says when a container that stopped is started again.
type RestartPolicy string

// The restart policies, as in Kubernetes.
const (
	RestartAlways    RestartPolicy = "Always"
	RestartOnFailure RestartPolicy = "OnFailure"
	RestartNever     RestartPolicy = "Never"
)

// ProbeType is liveness, readiness or startup.
type ProbeType int

// The probe types, in the order the agent reports them.
const (
	Liveness ProbeType = iota
	Readiness
	Startup
)

// ProbeTypes lists every probe type.
var ProbeTypes = [...]ProbeType{Liveness, Readiness, Startup}

func (t ProbeType) String() string {
	switch t {
	case Liveness:
		return "liveness"
	case Readiness:
		return "readiness"
	case Startup:
		return "startup"
	}
	return "unknown"
}

// Field is the JSON key of the check of this type in a container entry.
func (t ProbeType) Field() string { return t.String() + "_check" }

// Check is one health check: exactly one method plus timing and thresholds.
type Check struct {
	HTTPGet   *HTTPGet   `json:"http_get,omitempty"`
	TCPSocket *TCPSocket `json:"tcp_socket,omitempty"`
	Exec      *Exec      `json:"exec,omitempty"`
	GRPC      *GRPC      `json:"grpc,omitempty"`

	InitialDelaySeconds Seconds `json:"initial_delay_seconds"`
	PeriodSeconds       Seconds `json:"period_seconds"`
	TimeoutSeconds      Seconds `json:"timeout_seconds"`
	SuccessThreshold    int     `json:"success_threshold"`
	FailureThreshold    int     `json:"failure_threshold"`
	// TerminationGracePeriodSeconds overrides the agent's grace period when this
	// check's failure stops the container (liveness and startup only).
	TerminationGracePeriodSeconds *Seconds `json:"termination_grace_period_seconds,omitempty"`
}

// Method names the check's method as in the JSON: http_get, tcp_socket, exec or grpc.
func (c *Check) Method() string {
	switch {
	case c.HTTPGet != nil:
		return MethodHTTPGet
	case c.TCPSocket != nil:
		return MethodTCPSocket
	case c.Exec != nil:
		return MethodExec
	case c.GRPC != nil:
		return MethodGRPC
	}
	return ""
}

// The method names, as JSON keys and metric label values.
const (
	MethodHTTPGet   = "http_get"
	MethodTCPSocket = "tcp_socket"
	MethodExec      = "exec"
	MethodGRPC      = "grpc"
)

// HTTPGet is an HTTP GET check; success is a status in 200–399.
type HTTPGet struct {
	Path        string       `json:"path,omitempty"`
	Port        int          `json:"port,omitempty"`
	Host        string       `json:"host,omitempty"`
	Scheme      string       `json:"scheme,omitempty"`
	HTTPHeaders []HTTPHeader `json:"http_headers,omitempty"`
}

// HTTPHeader is one request header; an empty value removes a default header.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocket is a TCP connect check.
type TCPSocket struct {
	Port int    `json:"port,omitempty"`
	Host string `json:"host,omitempty"`
}

// Exec runs a command; exit code 0 is success. The command is never run through a shell.
type Exec struct {
	Command []string `json:"command"`
}

// GRPC is a grpc.health.v1 check; only SERVING is success.
type GRPC struct {
	Port    int    `json:"port,omitempty"`
	Host    string `json:"host,omitempty"`
	Service string `json:"service,omitempty"`
}

// Seconds is a duration written in JSON as a number of seconds, fractions allowed.
type Seconds time.Duration

// D returns the duration.
func (s Seconds) D() time.Duration { return time.Duration(s) }

// MarshalJSON writes the number of seconds.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(s).Seconds(), 'f', -1, 64), nil
}
