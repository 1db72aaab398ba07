package service

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-shellwords"
)

// Defaults for check fields, as in the kubelet and the EAS documentation.
const (
	DefaultPeriod                  = 10 * time.Second
	DefaultTimeout                 = time.Second
	DefaultSuccessThreshold        = 1
	DefaultReadinessFailThreshold  = 3
	DefaultLivenessFailThreshold   = 1
	DefaultStartupFailureThreshold = 1
	// MinDuration is the shortest non-zero duration a check may use.
	MinDuration = 10 * time.Millisecond
)

// DefaultReservedPorts are the ports the EAS serving engine keeps for itself.
var DefaultReservedPorts = []int{8080, 9090}

// Options adjust parsing and validation.
type Options struct {
	// ReservedPorts may not be used as a container or check port; nil means
	// DefaultReservedPorts, an empty non-nil slice means none.
	ReservedPorts []int
}

func (o Options) reserved() []int {
	if o.ReservedPorts == nil {
		return DefaultReservedPorts
	}
	return o.ReservedPorts
}

// DefaultCheck returns a check of type t with every default applied and no method:
// the values a check's absent fields take.
func DefaultCheck(t ProbeType) *Check {
	c := &Check{
		PeriodSeconds:    Seconds(DefaultPeriod),
		TimeoutSeconds:   Seconds(DefaultTimeout),
		SuccessThreshold: DefaultSuccessThreshold,
		FailureThreshold: DefaultLivenessFailThreshold,
	}
	if t == Readiness {
		c.FailureThreshold = DefaultReadinessFailThreshold
	}
	return c
}

// presetField gives a check field of a container entry its type's defaults before the
// decoder fills in what the document says (see presetter).
func (c *Container) presetField(key string, field reflect.Value) {
	for _, t := range ProbeTypes {
		if key == t.Field() {
			field.Set(reflect.ValueOf(DefaultCheck(t)))
		}
	}
}

// setDefaults fills in what depends on other fields: container names from the
// service's name, then each container's defaults.
func (s *Service) setDefaults() {
	if s.Metadata.Name == "" {
		s.Metadata.Name = s.Name
	}
	for i := range s.Containers {
		c := &s.Containers[i]
		if c.Name == "" && s.Metadata.Name != "" {
			c.Name = s.Metadata.Name + "-" + strconv.Itoa(i)
		}
		c.SetDefaults()
	}
}

// SetDefaults fills in a container's defaults that depend on its other fields: the
// restart policy, Args from Command or Script, and each check's port, HTTP path and scheme.
// Parse applies it; a container built in code calls it before Validate.
func (c *Container) SetDefaults() {
	if c.RestartPolicy == "" {
		c.RestartPolicy = RestartAlways
	}
	if args, err := splitCommand(c.Command); err == nil {
		c.Args = args
	}
	if c.Script != "" && c.Command == "" {
		c.Args = []string{"/bin/sh", "-c", c.Script}
	}
	for _, t := range ProbeTypes {
		if ch := c.Check(t); ch != nil {
			ch.setDefaults(c.Port)
		}
	}
}

// setDefaults gives a check's method the container's port when it names none, and an
// HTTP check its default path and scheme (a scheme in another case is written as the
// constant it names).
func (c *Check) setDefaults(containerPort int) {
	for _, port := range c.methodPorts() {
		if *port == 0 {
			*port = containerPort
		}
	}
	if h := c.HTTPGet; h != nil {
		if h.Path == "" {
			h.Path = "/"
		}
		switch strings.ToUpper(h.Scheme) {
		case "":
			h.Scheme = "HTTP"
		case "HTTP", "HTTPS":
			h.Scheme = strings.ToUpper(h.Scheme)
		}
	}
}

// methodPorts are the port fields of the check's methods (one in a valid check; none
// for exec).
func (c *Check) methodPorts() []*int {
	var ports []*int
	if c.HTTPGet != nil {
		ports = append(ports, &c.HTTPGet.Port)
	}
	if c.TCPSocket != nil {
		ports = append(ports, &c.TCPSocket.Port)
	}
	if c.GRPC != nil {
		ports = append(ports, &c.GRPC.Port)
	}
	return ports
}

// splitCommand splits a container's command into words as a shell would, without
// running one: shell operators are refused. An empty command has no words and no
// error.
func splitCommand(cmd string) ([]string, error) {
	if cmd == "" {
		return nil, nil
	}
	sp := shellwords.NewParser()
	args, err := sp.Parse(cmd)
	switch {
	case err != nil:
		return nil, fmt.Errorf("cannot split into words: %v", err)
	case sp.Position >= 0:
		return nil, fmt.Errorf("shell operator at offset %d: the command is not run through a shell; write \"sh -c '...'\" to use one", sp.Position)
	case len(args) == 0:
		return nil, errors.New("holds no words")
	}
	return args, nil
}
