package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSampleServerEndpoints(t *testing.T) {
	h := newHealth(false)
	srv := httptest.NewServer(handler(h))
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader("input"))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	steps := []struct {
		method, path string
		want         int
	}{
		{"GET", "/health", 200},
		{"POST", "/", 200},
		{"GET", "/", 200},
		{"GET", "/status/503", 503},
		{"GET", "/status/x", 400},
		{"GET", "/redirect?to=/health", 302},
		{"POST", "/fail", 200},
		{"GET", "/health", 500},
		{"GET", "/", 500},
		{"POST", "/recover", 200},
		{"GET", "/health", 200},
	}
	for _, s := range steps {
		if got := do(s.method, s.path); got != s.want {
			t.Fatalf("%s %s = %d, want %d", s.method, s.path, got, s.want)
		}
	}
	if code := check([]string{"--url", srv.URL + "/health"}); code != 0 {
		t.Fatalf("check on a healthy server exited %d", code)
	}
	h.set(false)
	if code := check([]string{"--url", srv.URL + "/health"}); code != 1 {
		t.Fatalf("check on a failing server exited %d", code)
	}
}
