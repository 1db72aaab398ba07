package main

import (
	"errors"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/netutil"
)

// httpLimits bound what clients of the status server can hold: connections at once,
// time to send a request, and time a kept-alive connection may sit idle. Scrapers and
// the kubelet's probes need a handful of connections; without limits, thousands of
// idle ones cost tens of megabytes for as long as their clients like.
type httpLimits struct {
	maxConns                                     int
	readHeaderTimeout, readTimeout, writeTimeout time.Duration
	idleTimeout                                  time.Duration
	maxHeaderBytes                               int
}

var defaultHTTPLimits = httpLimits{
	maxConns:          256,
	readHeaderTimeout: 10 * time.Second,
	readTimeout:       30 * time.Second,
	writeTimeout:      60 * time.Second, // a /metrics scrape of a large node
	idleTimeout:       30 * time.Second,
	maxHeaderBytes:    64 << 10,
}

// serveStatus serves h on ln within limits until the returned server is shut down.
func serveStatus(ln net.Listener, h http.Handler, l httpLimits, log *zap.Logger) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.readHeaderTimeout,
		ReadTimeout:       l.readTimeout,
		WriteTimeout:      l.writeTimeout,
		IdleTimeout:       l.idleTimeout,
		MaxHeaderBytes:    l.maxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	go func() {
		if err := srv.Serve(netutil.LimitListener(ln, l.maxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", zap.Error(err))
		}
	}()
	return srv
}
