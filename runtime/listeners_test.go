package runtime

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0A00020F:1F40 0A000210:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
`

const procTCP6 = `  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000
`

func TestParseProcNetTCP(t *testing.T) {
	t.Parallel()
	ls, err := ParseProcNetTCP(strings.NewReader(procTCP))
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[0].IP.String() != "127.0.0.1" || ls[0].Port != 8000 || ls[1].IP.String() != "0.0.0.0" || ls[1].Port != 8001 {
		t.Fatalf("%+v", ls)
	}
	ls6, err := ParseProcNetTCP(strings.NewReader(procTCP6))
	if err != nil || len(ls6) != 1 || ls6[0].IP.String() != "::1" || ls6[0].Port != 9000 {
		t.Fatalf("%+v %v", ls6, err)
	}
	if _, err := ParseProcNetTCP(strings.NewReader("h\n 0: zz:1 0:0 0A\n")); err == nil {
		t.Fatal("bad address accepted")
	}
}

func TestExplainRefused(t *testing.T) {
	t.Parallel()
	ls, _ := ParseProcNetTCP(strings.NewReader(procTCP))
	cases := map[string]string{
		"10.0.2.15:8000": "listening on 127.0.0.1:8000 only; bind 0.0.0.0",
		"10.0.2.15:9000": "nothing listens on 9000; listening: 8000, 8001",
		"127.0.0.1:8000": "",
		"10.0.2.15:8001": "",
	}
	for addr, want := range cases {
		if got := ExplainRefused(addr, ls); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
	if got := ExplainRefused("10.0.2.15:1", nil); got != "nothing listens on 1; no TCP port is listening" {
		t.Errorf("empty: %q", got)
	}
}

// TestExplainRealSockets reads this machine's own /proc/net for a real listener.
func TestExplainRealSockets(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	ls, err := Listeners("/proc/net")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range ls {
		found = found || (l.Port == port && l.IP.IsLoopback())
	}
	if !found {
		t.Fatalf("listener on %d not found in /proc/net", port)
	}
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	err = Explain(refused, "192.0.2.1:"+strconv.Itoa(port), "/proc/net")
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "only; bind 0.0.0.0") || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("got %v", err)
	}
	if err := Explain(errors.New("timeout"), "x:1", "/proc/net"); err.Error() != "timeout" {
		t.Fatalf("other errors changed: %v", err)
	}
}
