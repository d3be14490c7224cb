// Package metrics exports an nbdd server's counters as Prometheus metrics
// (https://prometheus.io/docs/instrumenting/writing_exporters/): the
// per-export requests, bytes, errors and latencies of server.Stats, the
// buffer strategy and memory budget, the KSM throttler, the process and
// the Go runtime. Nothing is counted on the request path for it: a
// Collector reads Server.Stats when Prometheus scrapes.
//
// docs/operations.md ("Metrics") lists every metric.
package metrics

import (
	"net/http"
	"runtime"

	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/ksm"
	"github.com/nbdd/nbdd/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config says what a Collector reads; what is nil is left out.
type Config struct {
	// Server is the server whose Stats are exported.
	Server *server.Server
	// Budget is the memory budget the server's buffers are charged to
	// (nil: none, and no budget metrics).
	Budget *bufstrategy.Budget
	// KSM is the KSM throttler, read at each scrape (nil: KSM is off,
	// and no KSM metrics).
	KSM KSMStatuser
	// Version and Revision label nbdd_build_info.
	Version, Revision string
}

// KSMStatuser reports a KSM throttler's state; *ksm.Throttler is one.
type KSMStatuser interface {
	Status() ksm.Status
}

// NewRegistry returns a registry holding a Collector for cfg, the client
// library's process and Go collectors (process_* and go_* metrics) and
// nbdd_build_info.
func NewRegistry(cfg Config) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(cfg),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "nbdd_build_info",
			Help:        "Always 1; the labels say which nbdd this is.",
			ConstLabels: prometheus.Labels{"version": cfg.Version, "revision": cfg.Revision, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	return reg
}

// Handler serves reg in the Prometheus exposition formats, the one a
// scraper asks for (text by default); a failing collector is reported
// in the reply as an HTTP 500, not hidden.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
