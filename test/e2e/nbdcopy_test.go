package e2e

import (
	"path/filepath"
	"testing"
	"time"
)

// TestNBDCopyRoundTrip copies the 256 MiB random image into nbdd and back
// out with nbdcopy at its default parallelism (several connections when
// nbdd advertises multi-conn, 64 requests in flight on each), compares the
// bytes, and logs the throughput of each direction (not asserted: the
// machine is shared).
func TestNBDCopyRoundTrip(t *testing.T) {
	requireTool(t, "nbdcopy")
	src := randomImage(t)
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--listen", "tcp://127.0.0.1:0", "--memory", "disk=256M")
		for _, tr := range []struct{ name, uri string }{{"unix", s.unixURI(t, "disk")}, {"tcp", s.tcpURI(t, "disk")}} {
			back := filepath.Join(t.TempDir(), "back.img")
			in := timed(func() { command{name: "nbdcopy", args: []string{"--flush", src, tr.uri}}.run(t) })
			out := timed(func() { command{name: "nbdcopy", args: []string{tr.uri, back}}.run(t) })
			requireSameFiles(t, src, back)
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
