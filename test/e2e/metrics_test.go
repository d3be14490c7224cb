package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/scrape"
)

// metricsAddrRE finds the address of --metrics in nbdd's log.
var metricsAddrRE = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)

// metricsURL returns the /metrics URL nbdd logged it serves.
func (s *nbdd) metricsURL(t *testing.T) string {
	t.Helper()
	if !s.stderr.waitFor("serving metrics", startTimeout) {
		t.Fatalf("nbdd did not log its metrics address:\n%s", s.stderr)
	}
	m := metricsAddrRE.FindStringSubmatch(s.stderr.String())
	if m == nil {
		t.Fatalf("no metrics address in nbdd's log:\n%s", s.stderr)
	}
	return "http://" + m[1] + "/metrics"
}

// TestMetricsFIO scrapes --metrics while fio writes 16 MiB in 64 KiB
// requests, then reads 8 MiB in 4 KiB requests at a limited rate, and
// after it: the request and byte counters of each scrape only grow, some
// scrape sees the READs part way, and at the end the counters equal
// fio's totals and each command's latency histogram counts its requests.
func TestMetricsFIO(t *testing.T) {
	requireTool(t, "fio")
	s := startNBDD(t, "--memory", "disk=64M", "--metrics", "127.0.0.1:0")
	url := s.metricsURL(t)
	const (
		writes, writeSize = 256, 64 << 10
		reads, readSize   = 2048, 4 << 10
	)

	type point struct{ reads, writes, readBytes float64 }
	var (
		mu     sync.Mutex
		points []point
	)
	ctx, stop := context.WithCancel(context.Background())
	scraped := make(chan error, 1)
	go func() {
		defer close(scraped)
		for ctx.Err() == nil {
			f, err := scrape.Get(nil, url)
			if err != nil {
				scraped <- err
				return
			}
			mu.Lock()
			points = append(points, point{
				f.Sum("nbdd_requests_total", "command", "NBD_CMD_READ"),
				f.Sum("nbdd_requests_total", "command", "NBD_CMD_WRITE"),
				f.Sum("nbdd_read_bytes_total")})
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	jobs := fio(t, s.unixURI(t, "disk"), "--iodepth=16",
		"--name=write", "--rw=write", "--bs=64k", "--size=16m",
		"--name=read", "--stonewall", "--rw=randread", "--bs=4k", "--size=16m", "--io_size=8m", "--rate_iops=4000")
	stop()
	if err := <-scraped; err != nil {
		t.Fatalf("scrape during fio: %v", err)
	}
	var fioReads, fioWrites, fioReadBytes, fioWriteBytes int64
	for _, j := range jobs {
		if j.Error != 0 {
			t.Fatalf("fio job %s: error %d", j.Name, j.Error)
		}
		fioReads += j.Read.TotalIOs
		fioWrites += j.Write.TotalIOs
		fioReadBytes += j.Read.IOBytes
		fioWriteBytes += j.Write.IOBytes
	}
	if fioReads != reads || fioWrites != writes || fioReadBytes != reads*readSize || fioWriteBytes != writes*writeSize {
		t.Fatalf("fio did %d reads (%d bytes), %d writes (%d bytes); want %d, %d, %d, %d",
			fioReads, fioReadBytes, fioWrites, fioWriteBytes, reads, reads*readSize, writes, writes*writeSize)
	}

	mu.Lock()
	defer mu.Unlock()
	midRun := 0
	for i, p := range points {
		if i > 0 && (p.reads < points[i-1].reads || p.writes < points[i-1].writes || p.readBytes < points[i-1].readBytes) {
			t.Errorf("scrape %d: %+v after %+v: a counter went down", i, p, points[i-1])
		}
		if p.reads > 0 && p.reads < reads {
			midRun++
		}
	}
	t.Logf("%d scrapes during fio, %d of them part way through the READs", len(points), midRun)
	if midRun == 0 {
		t.Errorf("no scrape saw the READs part way (%d scrapes): the counters move only at the end?", len(points))
	}

	f, err := scrape.Get(nil, url)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   int64
	}{
		{"nbdd_requests_total", []string{"command", "NBD_CMD_READ"}, fioReads},
		{"nbdd_requests_total", []string{"command", "NBD_CMD_WRITE"}, fioWrites},
		{"nbdd_read_bytes_total", nil, fioReadBytes},
		{"nbdd_written_bytes_total", nil, fioWriteBytes},
		{"nbdd_request_errors_total", nil, 0},
	} {
		labels := append([]string{"export", "disk"}, c.labels...)
		if got := f.Sum(c.name, labels...); got != float64(c.want) {
			t.Errorf("%s%v = %v; want %d (fio's)", c.name, c.labels, got, c.want)
		}
	}
	// fio's nbd engine connects once to learn the size, then once per job.
	if got := f.Sum("nbdd_export_connections_total", "export", "disk"); got < 2 {
		t.Errorf("nbdd_export_connections_total = %v; want 2 or more, fio's jobs'", got)
	}
	for _, cmd := range []string{"NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_FLUSH"} {
		n := f.Sum("nbdd_requests_total", "export", "disk", "command", cmd)
		h := f.Metric("nbdd_request_duration_seconds", "export", "disk", "command", cmd).GetHistogram()
		if float64(h.GetSampleCount()) != n {
			t.Errorf("%s: latency histogram counts %d; want %v, the requests", cmd, h.GetSampleCount(), n)
		}
		if n > 0 && h.GetSampleSum() <= 0 {
			t.Errorf("%s: latency sum %v; want > 0", cmd, h.GetSampleSum())
		}
	}
	for _, name := range []string{"nbdd_connections", "nbdd_memory_budget_bytes", "process_resident_memory_bytes", "go_goroutines"} {
		if _, ok := f.Value(name); !ok {
			t.Errorf("%s missing from the scrape", name)
		}
	}
}

// TestMetricsUnixSocket: --metrics unix:PATH serves the endpoint on a
// unix socket.
func TestMetricsUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp(shortTempDir(), "nbdd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "metrics")
	s := startNBDD(t, "--memory", "disk=1M", "--metrics", "unix:"+sock)
	s.metricsURL(t)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	f, err := scrape.Get(c, "http://nbdd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Value("nbdd_build_info"); !ok || v != 1 {
		t.Errorf("nbdd_build_info = %v, %v; want 1", v, ok)
	}
}
