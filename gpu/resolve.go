package gpu

import (
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Request is what a container's OCI spec says about its GPUs.
type Request struct {
	// All: every GPU of the node (NVIDIA_VISIBLE_DEVICES=all or a CDI "all" device).
	All bool
	// IDs are GPU UUIDs (GPU-…), MIG UUIDs (MIG-…) or NVML indexes.
	IDs []string
	// Minors are /dev/nvidiaN device entries.
	Minors []int
	// Sources says where the request came from: cdi, mounts, env, devices.
	Sources []string
}

const (
	cdiAnnotationPrefix = "cdi.k8s.io/"
	deviceListDir       = "/var/run/nvidia-container-devices"
	nvidiaMajor         = 195
	nvidiaCtlMinor      = 255
)

// FromSpec reads a container's GPUs from its OCI spec, in the order the NVIDIA
// container toolkit honours them: CDI annotations, device-list volume mounts, the
// NVIDIA_VISIBLE_DEVICES variable; plus /dev/nvidiaN device entries, which CDI and the
// device plugin's spec edits leave behind.
func FromSpec(s *specs.Spec) Request {
	var r Request
	if s == nil {
		return r
	}
	add := func(source, id string) {
		id = strings.TrimSpace(id)
		if i := strings.Index(id, "::"); i >= 0 { // time-slicing and MPS replicas
			id = id[:i]
		}
		switch strings.ToLower(id) {
		case "", "none", "void":
			return
		case "all":
			r.All = true
		default:
			if !slices.Contains(r.IDs, id) {
				r.IDs = append(r.IDs, id)
			}
		}
		if !slices.Contains(r.Sources, source) {
			r.Sources = append(r.Sources, source)
		}
	}
	keys := make([]string, 0, len(s.Annotations))
	for k := range s.Annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, cdiAnnotationPrefix) {
			continue
		}
		for _, qualified := range strings.Split(s.Annotations[k], ",") {
			if _, name, ok := strings.Cut(qualified, "="); ok {
				add("cdi", name)
			}
		}
	}
	for _, m := range s.Mounts {
		if dir, id := path.Split(m.Destination); path.Clean(dir) == deviceListDir {
			add("mounts", id)
		} else if strings.HasPrefix(m.Destination, deviceListDir+"/cdi/") {
			if _, name, ok := strings.Cut(m.Destination, "="); ok {
				add("cdi", name)
			}
		}
	}
	if s.Process != nil {
		for _, e := range s.Process.Env {
			v, ok := strings.CutPrefix(e, "NVIDIA_VISIBLE_DEVICES=")
			if !ok || v == deviceListDir {
				continue
			}
			for _, id := range strings.Split(v, ",") {
				add("env", id)
			}
		}
	}
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			if d.Type == "c" && d.Major == nvidiaMajor && d.Minor != nvidiaCtlMinor &&
				strings.HasPrefix(d.Path, "/dev/nvidia") && !slices.Contains(r.Minors, int(d.Minor)) {
				r.Minors = append(r.Minors, int(d.Minor))
				if !slices.Contains(r.Sources, "devices") {
					r.Sources = append(r.Sources, "devices")
				}
			}
		}
	}
	return r
}

// FromEnv reads a container's GPUs from its environment (KEY=VALUE strings) alone, as
// the NVIDIA container toolkit reads NVIDIA_VISIBLE_DEVICES.
func FromEnv(env []string) Request {
	return FromSpec(&specs.Spec{Process: &specs.Process{Env: env}})
}

// Empty reports whether the container asks for no GPU.
func (r Request) Empty() bool { return !r.All && len(r.IDs) == 0 && len(r.Minors) == 0 }

// Resolve maps the request onto the node's GPUs: UUIDs by UUID (a MIG slice's UUID to
// the GPU it is part of, whose health is the slice's), indexes by NVML index, device
// entries by minor number. It returns the GPUs in index order and the IDs that match
// none (a GPU this node does not have).
func (r Request) Resolve(devs []Device) (matched []Device, unmatched []string) {
	take := map[string]bool{}
	if r.All {
		for _, d := range devs {
			take[d.UUID] = true
		}
	}
	for _, id := range r.IDs {
		found := false
		for _, d := range devs {
			if strings.EqualFold(d.UUID, id) || d.hasMIG(id) {
				take[d.UUID], found = true, true
			} else if n, err := strconv.Atoi(id); err == nil && d.Index == n {
				take[d.UUID], found = true, true
			}
		}
		if !found {
			unmatched = append(unmatched, id)
		}
	}
	for _, minor := range r.Minors {
		found := false
		for _, d := range devs {
			if d.Minor == minor {
				take[d.UUID], found = true, true
			}
		}
		if !found {
			unmatched = append(unmatched, "/dev/nvidia"+strconv.Itoa(minor))
		}
	}
	for _, d := range devs {
		if take[d.UUID] {
			matched = append(matched, d)
		}
	}
	sort.Slice(matched, func(i, j int) bool { return matched[i].Index < matched[j].Index })
	return matched, unmatched
}

func (d Device) hasMIG(uuid string) bool {
	for _, m := range d.MIGDevices {
		if strings.EqualFold(m.UUID, uuid) {
			return true
		}
	}
	return false
}
