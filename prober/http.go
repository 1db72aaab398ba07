package prober

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/probe-agent/probe-agent/service"
)

type targetKey struct{}

// MaxHeaderBytes bounds the response headers an HTTP or gRPC probe reads (64 KiB), so
// that hostile targets cannot make the agent hold megabytes per probe.
const MaxHeaderBytes = 64 << 10

// httpTransport is shared by every HTTP probe: keep-alives are off, so no connection is
// ever pooled and the per-request target in the context decides where each dial goes.
var httpTransport = &http.Transport{
	Proxy:                  nil,
	DisableKeepAlives:      true,
	DisableCompression:     true,
	MaxResponseHeaderBytes: MaxHeaderBytes,
	TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // probes skip verification, as the kubelet's do
	DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		t, ok := ctx.Value(targetKey{}).(Target)
		if !ok {
			return nil, errors.New("http probe: no target in context")
		}
		return dial(ctx, t, network, addr, lingerSeconds)
	},
}

// maxRedirects is the kubelet's limit on same-host redirects.
const maxRedirects = 10

var httpClient = &http.Client{
	Transport: httpTransport,
	CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Hostname() != via[0].URL.Hostname() {
			return http.ErrUseLastResponse
		}
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		return nil
	},
}

// HTTP sends a GET; a final status in 200–399 is a success, and a redirect to another
// host is not followed but reported as a success with a warning. The response body is
// read (at most 10 KiB) within the timeout and never copied into the output: a body
// that stalls or breaks off is a failure, as in the kubelet. URLs in the output carry
// no query string and no user information.
func HTTP(ctx context.Context, t Target, c *service.Check, s Settings) Result {
	h := c.HTTPGet
	u := &url.URL{
		Scheme: strings.ToLower(h.Scheme),
		Host:   net.JoinHostPort(hostOr(h.Host, t), strconv.Itoa(h.Port)),
	}
	if p, err := url.Parse(h.Path); err == nil {
		u.Path, u.RawPath, u.RawQuery = p.Path, p.RawPath, p.RawQuery
	} else {
		u.Path = h.Path
	}
	req, err := http.NewRequestWithContext(context.WithValue(ctx, targetKey{}, t), http.MethodGet, u.String(), nil)
	if err != nil {
		return Result{Outcome: Unknown, Output: err.Error()}
	}
	for _, hd := range h.HTTPHeaders {
		req.Header.Add(hd.Name, hd.Value)
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header.Set("User-Agent", s.userAgent())
	}
	if v, ok := req.Header["Accept"]; !ok {
		req.Header.Set("Accept", "*/*")
	} else if len(v) == 1 && v[0] == "" {
		req.Header.Del("Accept")
	}
	if host := req.Header.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return dialFailure(ctx, redactURLError(err))
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxOutput))
	resp.Body.Close()
	code := resp.StatusCode
	if err != nil {
		return Result{Outcome: Failure, Output: fmt.Sprintf("HTTP %d, then reading the body: %s", code, errText(ctx, redactURLError(err)))}
	}
	switch {
	case code >= 300 && code < 400:
		loc := redactURL(resp.Header.Get("Location"))
		return Result{Outcome: Warning, Output: fmt.Sprintf("HTTP %d: redirect to another host not followed (%s)", code, loc)}
	case code >= 200 && code < 300:
		return Result{Outcome: Success, Output: "HTTP " + strconv.Itoa(code)}
	}
	return Result{Outcome: Failure, Output: "HTTP probe failed with status code " + strconv.Itoa(code)}
}

// redactURL keeps a URL's scheme, host and path: query strings and user information
// carry tokens and passwords, which do not belong in outputs, logs or metrics.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

// redactURLError redacts the URL a *url.Error carries in its text.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		redacted := *ue
		redacted.URL = redactURL(ue.URL)
		return &redacted
	}
	return err
}
