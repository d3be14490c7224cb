package metrics_test

import (
	"net"
	"net/http"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/metrics"
	"github.com/nbdd/nbdd/server"
)

// A program that embeds the server serves its metrics next to it.
func Example() {
	srv := &server.Server{
		Exports: []server.Export{{Name: "disk", Backend: backend.NewMemory(1 << 30)}},
	}
	reg := metrics.NewRegistry(metrics.Config{Server: srv, Version: "1.0.0"})
	http.Handle("GET /metrics", metrics.Handler(reg))
	go http.ListenAndServe("127.0.0.1:9100", nil)

	l, err := net.Listen("unix", "/tmp/nbdd.sock")
	if err != nil {
		return
	}
	srv.Serve(l)
}
