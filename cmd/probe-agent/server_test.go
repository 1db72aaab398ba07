package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func startStatus(t *testing.T, l httpLimits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := serveStatus(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }), l, zap.NewNop())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// keptAlive opens a connection, makes one request on it and leaves it open and idle.
func keptAlive(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return c
}

// closedByServer reports whether the server closes c within d.
func closedByServer(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

// TestStatusServerLimits: idle and half-sent connections are closed, connections past
// the cap wait, and oversized headers are refused, so clients cannot make the agent
// hold memory for as long as they like.
func TestStatusServerLimits(t *testing.T) {
	t.Parallel()
	addr := startStatus(t, httpLimits{maxConns: 8, readHeaderTimeout: 200 * time.Millisecond, readTimeout: time.Second,
		writeTimeout: time.Second, idleTimeout: 300 * time.Millisecond, maxHeaderBytes: 4 << 10})
	if !closedByServer(keptAlive(t, addr), 5*time.Second) {
		t.Error("an idle kept-alive connection was not closed")
	}
	half, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	io.WriteString(half, "GET / HTTP/1.1\r\n")
	if !closedByServer(half, 5*time.Second) {
		t.Error("a connection that never finished its headers was not closed")
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("b", 8<<10))
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("8 KiB of headers: %v %v, want 431", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestStatusServerConnectionCap(t *testing.T) {
	t.Parallel()
	addr := startStatus(t, httpLimits{maxConns: 2, readHeaderTimeout: 10 * time.Second, readTimeout: 10 * time.Second,
		writeTimeout: 10 * time.Second, idleTimeout: time.Minute, maxHeaderBytes: 4 << 10})
	first := keptAlive(t, addr)
	keptAlive(t, addr)
	client := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	var timeout net.Error
	if resp, err := client.Get("http://" + addr + "/"); !errors.As(err, &timeout) || !timeout.Timeout() {
		if err == nil {
			resp.Body.Close()
		}
		t.Fatalf("a third connection was served past the cap of 2: %v", err)
	}
	first.Close()
	client.Timeout = 5 * time.Second
	resp, err := client.Get("http://" + addr + "/")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after one closed: %v %v", resp, err)
	}
	resp.Body.Close()
}
