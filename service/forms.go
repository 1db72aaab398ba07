package service

import (
	"reflect"
	"strconv"
)

// ParseContainer reads one container entry (the form of the probe-agent.io/checks
// container label) strictly, as in a service.json file; errors carry path as the root
// of their JSON paths.
func ParseContainer(data []byte, path string, opts Options) (*Container, error) {
	root, err := parseTree(data)
	if err != nil {
		return nil, prefixErrors(path, err)
	}
	var c Container
	var d decoder
	d.decode(root, reflect.ValueOf(&c).Elem(), path, "containers[]")
	errs := d.errs
	c.SetDefaults()
	c.validate(path, opts, &errs, nil)
	if len(errs) > 0 {
		return nil, report(errs)
	}
	return &c, nil
}

// ParseContainers reads an object of container entries keyed by container name (the
// form of the probe-agent.io/checks pod annotation). Each entry's Name is set to its key.
func ParseContainers(data []byte, path string, opts Options) (map[string]*Container, error) {
	root, err := parseTree(data)
	if err != nil {
		return nil, prefixErrors(path, err)
	}
	var errs ErrorList
	if root.kind != kindObject {
		errs.add(path, "must be an object keyed by container name, got %s", root.kind)
		return nil, errs
	}
	out := map[string]*Container{}
	for _, m := range root.members {
		p := path + "[" + strconv.Quote(clip(m.key)) + "]"
		if _, dup := out[m.key]; dup {
			errs.add(p, "duplicate key")
			continue
		}
		var c Container
		d := decoder{errs: errs}
		d.decode(m.val, reflect.ValueOf(&c).Elem(), p, "containers[]")
		errs = d.errs
		c.SetDefaults()
		c.validate(p, opts, &errs, nil)
		c.Name = m.key
		out[m.key] = &c
	}
	if len(errs) > 0 {
		return nil, report(errs)
	}
	return out, nil
}

func prefixErrors(path string, err error) error {
	l := Errors(err)
	for _, e := range l {
		if e.Path == "" {
			e.Path = path
		}
	}
	return l
}
