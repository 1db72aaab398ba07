// Package testsock gives tests TCP ports with a known behaviour on 127.0.0.1: free
// ones, and ones that refuse connections.
package testsock

import (
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// RefusingPort returns a port of 127.0.0.1 that refuses connections until the test
// ends: a socket bound to it but not listening holds it, so no other test can take
// it meanwhile (a port that was merely closed could be handed out again at once).
func RefusingPort(t testing.TB) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

var (
	freeMu sync.Mutex
	given  = map[int]bool{}
)

// FreePort returns a port of 127.0.0.1 nothing listens on, never the same one twice in
// a test binary: the kernel may hand a port that was just closed to the next caller,
// and parallel tests' servers must not meet.
func FreePort(t testing.TB) int {
	t.Helper()
	freeMu.Lock()
	defer freeMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !given[p] {
			given[p] = true
			return p
		}
	}
}

// FreeAddr is FreePort as an address, 127.0.0.1:port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}
