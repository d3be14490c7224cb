package e2e

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestNBDCopyRoundTrip copies the 256 MiB random image into nbdd and back
// out with nbdcopy at its default parallelism (a connection per thread when
// nbdd advertises multi-conn, 64 requests in flight on each), compares the
// bytes, and logs the throughput of each direction (not asserted: the
// machine is shared). Every strategy runs on the unix socket, the default
// one on TCP too.
func TestNBDCopyRoundTrip(t *testing.T) {
	requireTool(t, "nbdcopy")
	src := randomImage(t)
	forEachStrategy(t, func(t *testing.T, strategy string) {
		tcp := strategy == "pool" // the default; TCP for the others is in TestQEMUImgConvert
		args := []string{"--strategy", strategy, "--memory", "disk=256M"}
		if tcp {
			args = append(args, "--listen", "tcp://127.0.0.1:0")
		}
		s := startNBDD(t, args...)
		transports := []struct{ name, uri string }{{"unix", s.unixURI(t, "disk")}}
		if tcp {
			transports = append(transports, struct{ name, uri string }{"tcp", s.tcpURI(t, "disk")})
		}
		for _, tr := range transports {
			back := filepath.Join(t.TempDir(), "back.img")
			before := connections(s)
			in := timed(func() { command{name: "nbdcopy", args: []string{"--flush", src, tr.uri}}.run(t) })
			out := timed(func() { command{name: "nbdcopy", args: []string{tr.uri, back}}.run(t) })
			requireSameFiles(t, src, back)
			// With multi-conn advertised, nbdcopy opens one connection per
			// thread, up to 4, and it runs one thread per CPU.
			if n, want := connections(s)-before, 2*min(4, runtime.NumCPU()); n < want {
				t.Errorf("two nbdcopy runs opened %d connections; want %d (multi-conn, min(4, CPUs) each)", n, want)
			}
			t.Logf("nbdcopy %s, %s: write %.0f MB/s, read %.0f MB/s", strategy, tr.name, mbps(imageSize, in), mbps(imageSize, out))
		}
	})
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func mbps(n int64, d time.Duration) float64 {
	return float64(n) / 1e6 / d.Seconds()
}

// connections counts the clients nbdd has logged so far.
func connections(s *nbdd) int {
	return strings.Count(s.stderr.String(), "client connected")
}
