package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// FieldError is one problem in the configuration, located by its JSON path.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// ErrorList is every problem found in one document, in document order.
type ErrorList []*FieldError

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

func (l *ErrorList) add(path, format string, args ...any) {
	*l = append(*l, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Errors flattens err into its field errors: an ErrorList is returned as it is, any
// other error as a single entry without a path.
func Errors(err error) ErrorList {
	var l ErrorList
	if errors.As(err, &l) {
		return l
	}
	if err == nil {
		return nil
	}
	return ErrorList{{Msg: err.Error()}}
}

// node is one parsed JSON value. Objects keep their members in document order, with
// duplicates, so that the decoder can report duplicate keys with their paths.
type node struct {
	kind    kind
	members []member
	elems   []*node
	str     string
	num     json.Number
	boolean bool
}

type member struct {
	key string
	val *node
}

type kind int

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindArray
	kindObject
)

func (k kind) String() string {
	return [...]string{"null", "boolean", "number", "string", "array", "object"}[k]
}

// maxDepth bounds nesting so that hostile input cannot exhaust the stack.
const maxDepth = 64

// parseTree reads exactly one JSON value from data.
func parseTree(data []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	n, err := readNode(dec, 0)
	if err != nil {
		return nil, syntaxError(data, dec, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, syntaxError(data, dec, errors.New("unexpected data after the top-level value"))
	}
	return n, nil
}

func readNode(dec *json.Decoder, depth int) (*node, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nesting deeper than %d levels", maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &node{kind: kindObject}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key is not a string")
				}
				v, err := readNode(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.members = append(n.members, member{key, v})
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return n, nil
		case '[':
			n := &node{kind: kindArray}
			for dec.More() {
				v, err := readNode(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.elems = append(n.elems, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return n, nil
		}
		return nil, fmt.Errorf("unexpected %q", rune(t))
	case string:
		return &node{kind: kindString, str: t}, nil
	case json.Number:
		return &node{kind: kindNumber, num: t}, nil
	case bool:
		return &node{kind: kindBool, boolean: t}, nil
	case nil:
		return &node{kind: kindNull}, nil
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}

// syntaxError turns a decoder error into one located by line and column.
func syntaxError(data []byte, dec *json.Decoder, err error) error {
	off := dec.InputOffset()
	var se *json.SyntaxError
	if errors.As(err, &se) {
		off = se.Offset
	}
	off = min(max(off, 0), int64(len(data)))
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(data[:off], '\n'))
	msg := err.Error()
	if err == io.ErrUnexpectedEOF {
		msg = "unexpected end of input"
	}
	return ErrorList{{Msg: fmt.Sprintf("invalid JSON at line %d, column %d: %s", line, col, msg)}}
}

// presetter is a struct whose fields' defaults depend on which field they are (a
// check's on its probe type): before decoding a member into a nil pointer field,
// decode lets it set the field to its default value, then fills in what the document
// says.
type presetter interface {
	presetField(key string, field reflect.Value)
}

var secondsType = reflect.TypeFor[Seconds]()

// maxSeconds bounds durations so that they fit in a time.Duration with room to add.
const maxSeconds = 365 * 24 * 3600

// decoder fills Go values from a parsed document strictly: unknown fields, duplicate
// keys and wrong types are errors at their paths. EAS platform fields (Schema) are
// type-checked and listed as ignored.
type decoder struct {
	errs ErrorList
	// ignored lists the paths of the EAS platform fields found, in document order.
	ignored []string
}

// decode fills v from n. Fields absent from n keep the value v already has, which is
// how defaults are applied. path is n's JSON path, pattern its Schema path.
func (d *decoder) decode(n *node, v reflect.Value, path, pattern string) {
	if v.Type() == secondsType {
		if n.kind != kindNumber {
			d.errs.add(path, "must be a number of seconds, got %s", n.kind)
			return
		}
		f, err := n.num.Float64()
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > maxSeconds {
			d.errs.add(path, "%s is out of range (at most %d seconds)", clip(n.num.String()), maxSeconds)
			return
		}
		v.SetInt(int64(f * float64(time.Second)))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.kind == kindNull {
			v.SetZero()
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path, pattern)
	case reflect.Struct:
		if n.kind != kindObject {
			d.errs.add(path, "must be an object, got %s", n.kind)
			return
		}
		fields := jsonFields(v.Type())
		d.members(n, path, func(m member, p string) {
			i, ok := fields[m.key]
			if !ok {
				d.unknown(m, p, pattern)
				return
			}
			f := v.Field(i)
			if ps, ok := v.Addr().Interface().(presetter); ok && f.Kind() == reflect.Pointer && f.IsNil() && m.val.kind != kindNull {
				ps.presetField(m.key, f)
			}
			d.decode(m.val, f, p, childPattern(pattern, m.key))
		})
	case reflect.Slice:
		if n.kind == kindNull {
			v.SetZero()
			return
		}
		if n.kind != kindArray {
			d.errs.add(path, "must be an array, got %s", n.kind)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.elems), len(n.elems))
		for i, e := range n.elems {
			d.decode(e, s.Index(i), path+"["+strconv.Itoa(i)+"]", pattern+"[]")
		}
		v.Set(s)
	case reflect.String:
		if n.kind != kindString {
			d.errs.add(path, "must be a string, got %s", n.kind)
			return
		}
		v.SetString(n.str)
	case reflect.Bool:
		if n.kind != kindBool {
			d.errs.add(path, "must be true or false, got %s", n.kind)
			return
		}
		v.SetBool(n.boolean)
	case reflect.Int:
		if n.kind != kindNumber {
			d.errs.add(path, "must be an integer, got %s", n.kind)
			return
		}
		i, err := strconv.ParseInt(n.num.String(), 10, 32)
		if err != nil {
			if f, ferr := n.num.Float64(); ferr == nil && f == math.Trunc(f) && math.Abs(f) < math.MaxInt32 {
				i = int64(f)
			} else if ferr == nil && f != math.Trunc(f) {
				d.errs.add(path, "must be an integer, got %s", clip(n.num.String()))
				return
			} else {
				d.errs.add(path, "%s is out of range", clip(n.num.String()))
				return
			}
		}
		v.SetInt(i)
	default:
		panic("service: no decoder for " + v.Type().String())
	}
}

// members calls fn for each member of the object n with its path; a key seen before is
// a duplicate-key error instead.
func (d *decoder) members(n *node, path string, fn func(m member, path string)) {
	seen := make(map[string]bool, len(n.members))
	for _, m := range n.members {
		p := join(path, m.key)
		if seen[m.key] {
			d.errs.add(p, "duplicate key")
			continue
		}
		seen[m.key] = true
		fn(m, p)
	}
}

// unknown handles a member that no Go field takes: an EAS platform field is
// type-checked and recorded as ignored; anything else is an error, with the closest
// known name when the key looks like a misspelling of one.
func (d *decoder) unknown(m member, path, parent string) {
	pattern := childPattern(parent, m.key)
	if f := lookup(pattern); f != nil && f.Use == Ignored {
		d.ignored = append(d.ignored, path)
		d.platform(m.val, f, path, pattern)
		return
	}
	d.unknownField(path, parent, m.key)
}

func (d *decoder) unknownField(path, parent, key string) {
	if s := suggest(parent, key); s != "" {
		d.errs.add(path, "unknown field; did you mean %q?", s)
		return
	}
	d.errs.add(path, "unknown field")
}

// platform checks an EAS platform field's value against its schema entry f, and the
// members and elements the schema lists below it.
func (d *decoder) platform(n *node, f *Field, path, pattern string) {
	if !hasType(n, f.Type) {
		d.errs.add(path, "must be %s, got %s", strings.ReplaceAll(f.Type, "|", " or "), describe(n))
		return
	}
	switch n.kind {
	case kindObject:
		d.members(n, path, func(m member, p string) {
			cp := childPattern(pattern, m.key)
			if c := lookup(cp); c != nil {
				d.platform(m.val, c, p, cp)
			} else if !f.Open {
				d.unknownField(p, pattern, m.key)
			}
		})
	case kindArray:
		if ef := lookup(pattern + "[]"); ef != nil {
			for i, e := range n.elems {
				d.platform(e, ef, path+"["+strconv.Itoa(i)+"]", pattern+"[]")
			}
		}
	}
}

// describe names a value's JSON type for an error; a number says whether it has a
// fraction.
func describe(n *node) string {
	if n.kind == kindNumber && !isInteger(n.num.String()) {
		return "number " + clip(n.num.String())
	}
	return n.kind.String()
}

// jsonFields maps JSON keys to struct field indexes.
func jsonFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			m[name] = i
		}
	}
	return m
}

func join(path, key string) string {
	key = clip(key)
	if path == "" {
		return key
	}
	return path + "." + key
}

// maxEcho bounds what an error repeats of the document (a key, a value, a number).
const maxEcho = 64

// clip shortens a string from the document to at most maxEcho bytes (on a rune
// boundary) for an error message.
func clip(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
