package main

import (
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/nbdd/nbdd/metrics"
	"github.com/urfave/cli/v2"
)

func metricsFlag() cli.Flag {
	return &cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics at http://`ADDR`/metrics: HOST:PORT, or unix:PATH (docs/operations.md lists them)", EnvVars: []string{"NBDD_METRICS"}}
}

// startMetrics serves the Prometheus endpoint that --metrics names
// (none if unset) until the returned function runs: HOST:PORT or a unix
// socket, spelled as for --listen and made with --socket-mode. The
// registry reads the server, its budget and the KSM throttler k (nil:
// off) at each scrape.
func startMetrics(c *cli.Context, cfg *config, k *ksmRunner, logger *slog.Logger) (stop func(), err error) {
	addr := c.String("metrics")
	if addr == "" {
		return func() {}, nil
	}
	mode, err := parseSocketMode(c.String("socket-mode"))
	if err != nil {
		return nil, err
	}
	l, err := listen("--metrics", addr, mode)
	if err != nil {
		return nil, err
	}
	info, _ := debug.ReadBuildInfo()
	rev, modified := buildRevision(info)
	switch {
	case rev == "":
		rev = "unknown"
	case modified:
		rev += "-modified"
	}
	mc := metrics.Config{Server: cfg.srv, Budget: cfg.budget, Version: version, Revision: rev}
	if k != nil {
		mc.KSM = k.t
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(metrics.NewRegistry(mc)))
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := hs.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics endpoint stopped", "err", err)
		}
	}()
	logger.Info("serving metrics", "addr", l.Addr().String(), "path", "/metrics")
	return func() { hs.Close() }, nil
}
