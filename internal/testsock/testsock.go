// Package testsock gives tests TCP ports with a known behaviour on 127.0.0.1.
package testsock

import (
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
