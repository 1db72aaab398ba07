package containerd

import (
	"context"
	"fmt"
	"net"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// inNetNS runs fn on a locked OS thread that has joined the network namespace at path,
// then returns the thread to the agent's namespace. Only what fn creates (sockets) lives
// in the target namespace; goroutines fn starts do not. A thread that cannot return is
// left locked, so the Go runtime discards it instead of reusing it.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			goruntime.UnlockOSThread()
			errc <- unavailable(fmt.Errorf("network namespace %s: %w", path, err))
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leaving network namespace %s: %w", path, err)
			return // the goroutine exits locked: the thread is destroyed
		}
		goruntime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// dialInNetNS creates and connects a socket inside the namespace at path. The
// non-blocking connect is started in the namespace; waiting for it needs none.
func dialInNetNS(ctx context.Context, path, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetNS(path, func() error {
		d := net.Dialer{}
		if dl, ok := ctx.Deadline(); ok {
			d.Deadline = dl
		}
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && conn != nil {
		conn.Close()
		conn = nil
	}
	return conn, err
}

// firstAddress returns the first non-loopback address of the namespace at path (on any
// interface that is up), IPv4 first, or 127.0.0.1 when it has none.
func firstAddress(path string) string {
	var v4, v6 string
	_ = inNetNS(path, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, i := range ifs {
			if i.Flags&net.FlagUp == 0 {
				continue
			}
			addrs, _ := i.Addrs()
			for _, a := range addrs {
				ipn, ok := a.(*net.IPNet)
				if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
					continue
				}
				if ipn.IP.To4() != nil && v4 == "" {
					v4 = ipn.IP.String()
				} else if ipn.IP.To4() == nil && v6 == "" {
					v6 = ipn.IP.String()
				}
			}
		}
		return nil
	})
	switch {
	case v4 != "":
		return v4
	case v6 != "":
		return v6
	}
	return "127.0.0.1"
}

// procStartTime returns when a process started: /proc/<pid>/stat gives its start in
// clock ticks after boot, and CLOCK_BOOTTIME says how long ago that was.
func procStartTime(pid int) (time.Time, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return time.Time{}, false
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(stat)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(rest) < 20 {
		return time.Time{}, false
	}
	ticks, err := strconv.ParseInt(rest[19], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}, false
	}
	now := time.Now()
	const clockTicks = 100 // USER_HZ on Linux
	sinceBoot := time.Duration(ts.Nano())
	started := time.Duration(ticks) * time.Second / clockTicks
	return now.Add(started - sinceBoot), true
}
