package runtime

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Listener is a listening TCP socket.
type Listener struct {
	IP   net.IP
	Port int
}

const tcpListen = "0A"

// ParseProcNetTCP reads the listening sockets from a /proc/<pid>/net/tcp or tcp6 file.
func ParseProcNetTCP(r io.Reader) ([]Listener, error) {
	var out []Listener
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != tcpListen {
			continue
		}
		host, port, ok := strings.Cut(f[1], ":")
		if !ok {
			return nil, fmt.Errorf("bad local address %q", f[1])
		}
		ip, err := procIP(host)
		if err != nil {
			return nil, err
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("bad port %q", port)
		}
		out = append(out, Listener{IP: ip, Port: int(p)})
	}
	return out, sc.Err()
}

// procIP decodes the kernel's hex address: 32-bit words in host (little-endian) order.
func procIP(h string) (net.IP, error) {
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return nil, fmt.Errorf("bad address %q", h)
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	return net.IP(b), nil
}

// Listeners reads the listening TCP sockets of the network namespace a /proc/<pid>/net
// directory shows (/proc/net for the agent's own).
func Listeners(procNet string) ([]Listener, error) {
	var all []Listener
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(procNet, name))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && name == "tcp6" {
				continue
			}
			return nil, err
		}
		l, err := ParseProcNetTCP(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		all = append(all, l...)
	}
	return all, nil
}

// ExplainRefused says why a connection to addr was refused, given what listens in the
// target's network namespace: a server bound to loopback only while addr is not
// loopback, or nothing on that port at all. It returns "" when it cannot tell.
func ExplainRefused(addr string, ls []Listener) string {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	port, _ := strconv.Atoi(portStr)
	target := net.ParseIP(host)
	var onPort []Listener
	var others []int
	for _, l := range ls {
		if l.Port == port {
			onPort = append(onPort, l)
		} else if !slices.Contains(others, l.Port) {
			others = append(others, l.Port)
		}
	}
	if len(onPort) == 0 {
		if len(others) == 0 {
			return fmt.Sprintf("nothing listens on %d; no TCP port is listening", port)
		}
		sort.Ints(others)
		s := make([]string, len(others))
		for i, p := range others {
			s[i] = strconv.Itoa(p)
		}
		return fmt.Sprintf("nothing listens on %d; listening: %s", port, strings.Join(s, ", "))
	}
	if target == nil || target.IsLoopback() {
		return ""
	}
	for _, l := range onPort {
		if !l.IP.IsLoopback() {
			return ""
		}
	}
	return fmt.Sprintf("listening on %s only; bind 0.0.0.0", net.JoinHostPort(onPort[0].IP.String(), portStr))
}

// RefusedError adds an explanation to a refused connection.
type RefusedError struct {
	Err         error
	Explanation string
}

func (e *RefusedError) Error() string { return e.Err.Error() + " (" + e.Explanation + ")" }
func (e *RefusedError) Unwrap() error { return e.Err }

// Explain wraps err, when it is a refused connection to addr, with the reason read
// from procNet; other errors come back as they are.
func Explain(err error, addr, procNet string) error {
	if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	ls, lerr := Listeners(procNet)
	if lerr != nil {
		return err
	}
	if why := ExplainRefused(addr, ls); why != "" {
		return &RefusedError{Err: err, Explanation: why}
	}
	return err
}
