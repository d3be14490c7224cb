package metrics_test

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/internal/scrape"
	"github.com/nbdd/nbdd/ksm"
	"github.com/nbdd/nbdd/metrics"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// socketPair returns the two ends of a unix stream socket pair.
func socketPair(t *testing.T) (srv, cli net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// testServer is a server with a 1 MiB memory export "mem" behind a
// budgeted pool, one connection to it over a socket pair, and the
// registry of its metrics served over HTTP.
type testServer struct {
	srv *server.Server
	c   *nbdclient.Conn
	url string
}

func newTestServer(t *testing.T, ks metrics.KSMStatuser) *testServer {
	t.Helper()
	budget, err := bufstrategy.NewBudget(8 << 20)
	require.NoError(t, err)
	bufs, err := bufstrategy.New("pool", bufstrategy.Config{Budget: budget})
	require.NoError(t, err)
	srv := &server.Server{
		Exports: []server.Export{{Name: "mem", Backend: backend.NewMemory(1 << 20)}},
		Buffers: bufs,
		Logger:  slog.New(slog.DiscardHandler),
	}
	t.Cleanup(func() { srv.Close() })
	sc, cc := socketPair(t)
	go srv.ServeConn(context.Background(), sc)
	c := nbdclient.New(cc)
	_, err = c.Open("mem")
	require.NoError(t, err)

	var cfg metrics.Config
	cfg.Server, cfg.Budget, cfg.Version, cfg.Revision = srv, budget, "1.2.3", "abc"
	if ks != nil {
		cfg.KSM = ks
	}
	hs := httptest.NewServer(metrics.Handler(metrics.NewRegistry(cfg)))
	t.Cleanup(hs.Close)
	return &testServer{srv: srv, c: c, url: hs.URL + "/metrics"}
}

func (ts *testServer) do(t *testing.T, typ protocol.Cmd, cookie, off uint64, n uint32, payload []byte) nbdclient.Reply {
	t.Helper()
	r, err := ts.c.Do(protocol.Request{Type: typ, Cookie: cookie, Offset: off, Length: n}, payload)
	require.NoError(t, err)
	return r
}

// scrapeWhen scrapes until ok holds of the scrape (a reply is counted
// once written, an instant after the client may have read it).
func (ts *testServer) scrapeWhen(t *testing.T, ok func(scrape.Families) bool) scrape.Families {
	t.Helper()
	var f scrape.Families
	require.Eventually(t, func() bool {
		var err error
		f, err = scrape.Get(nil, ts.url)
		require.NoError(t, err)
		return ok(f)
	}, 10*time.Second, 5*time.Millisecond)
	return f
}

// TestCollector: a scrape reports what a client did over a real socket:
// requests by command, bytes, errors by errno, latency histograms whose
// counts match the requests, connections, buffers and budget, and the
// process, Go and build metrics.
func TestCollector(t *testing.T) {
	ts := newTestServer(t, nil)
	data := make([]byte, 64<<10)
	for i := range 3 {
		require.Zero(t, ts.do(t, protocol.CmdWrite, uint64(i), uint64(i)<<16, 64<<10, data).Errno)
	}
	for i := range 5 {
		require.Zero(t, ts.do(t, protocol.CmdRead, uint64(10+i), 0, 4096, nil).Errno)
	}
	require.Zero(t, ts.do(t, protocol.CmdFlush, 20, 0, 0, nil).Errno)
	require.Equal(t, protocol.EINVAL, ts.do(t, protocol.CmdRead, 21, 1<<20, 4096, nil).Errno, "past the end")

	f := ts.scrapeWhen(t, func(f scrape.Families) bool {
		m := f.Metric("nbdd_request_duration_seconds", "export", "mem", "command", "NBD_CMD_READ")
		return m != nil && m.GetHistogram().GetSampleCount() == 6
	})
	value := func(name string, labels ...string) float64 {
		t.Helper()
		v, ok := f.Value(name, labels...)
		require.True(t, ok, "%s %v missing", name, labels)
		return v
	}
	exp := []string{"export", "mem"}
	cmd := func(c protocol.Cmd) []string { return append(exp, "command", c.String()) }
	require.Equal(t, 6.0, value("nbdd_requests_total", cmd(protocol.CmdRead)...))
	require.Equal(t, 3.0, value("nbdd_requests_total", cmd(protocol.CmdWrite)...))
	require.Equal(t, 1.0, value("nbdd_requests_total", cmd(protocol.CmdFlush)...))
	require.Equal(t, 0.0, value("nbdd_requests_total", cmd(protocol.CmdTrim)...))
	require.Equal(t, 0.0, value("nbdd_requests_total", append(exp, "command", "unknown")...))
	require.Equal(t, 5.0*4096, value("nbdd_read_bytes_total", exp...))
	require.Equal(t, float64(3*64<<10), value("nbdd_written_bytes_total", exp...))
	require.Equal(t, 1.0, value("nbdd_request_errors_total", append(exp, "errno", "NBD_EINVAL")...))
	require.Equal(t, 0.0, value("nbdd_request_errors_total", append(exp, "errno", "NBD_EIO")...))
	require.Equal(t, 5.0*4096, f.Sum("nbdd_path_bytes_total", exp...)-float64(3*64<<10), "paths add up to the bytes")
	require.Equal(t, 1.0, value("nbdd_export_connections_total", exp...))
	require.Equal(t, 1.0, value("nbdd_connections"))
	require.Equal(t, 1.0, value("nbdd_connections_accepted_total"))
	require.Equal(t, 0.0, value("nbdd_connections_refused_total", "reason", "limit"))
	require.Equal(t, 0.0, value("nbdd_connections_refused_total", "reason", "address"))
	require.Equal(t, 0.0, value("nbdd_export_access_refused_total"))

	for c, n := range map[protocol.Cmd]uint64{protocol.CmdRead: 6, protocol.CmdWrite: 3, protocol.CmdFlush: 1} {
		h := f.Metric("nbdd_request_duration_seconds", cmd(c)...).GetHistogram()
		require.Equal(t, n, h.GetSampleCount(), "%v", c)
		require.Positive(t, h.GetSampleSum())
		b := h.GetBucket()
		require.Len(t, b, server.LatencyBuckets+1, "and +Inf")
		require.Equal(t, 4e-6, b[0].GetUpperBound())
		require.Equal(t, server.LatencyBound(server.LatencyBuckets-1).Seconds(), b[len(b)-2].GetUpperBound())
		require.Equal(t, n, b[len(b)-1].GetCumulativeCount(), "+Inf holds them all")
	}
	require.Nil(t, f.Metric("nbdd_request_duration_seconds", cmd(protocol.CmdTrim)...), "no histogram for a command never sent")

	require.Equal(t, 1.0, value("nbdd_buffer_strategy_info", "strategy", "pool"))
	require.GreaterOrEqual(t, value("nbdd_buffer_held_bytes"), 0.0)
	require.Equal(t, float64(8<<20), value("nbdd_memory_budget_bytes"))
	require.Equal(t, 0.0, value("nbdd_memory_budget_in_use_bytes"), "no request in flight")
	require.Equal(t, 1.0, value("nbdd_build_info", "version", "1.2.3", "revision", "abc"))
	require.Positive(t, value("process_resident_memory_bytes"))
	require.Positive(t, value("go_goroutines"))
	require.Nil(t, f["nbdd_ksm_state"], "KSM metrics without a throttler")
}

// fakeKSM is a throttler's status.
type fakeKSM struct{ st ksm.Status }

func (k fakeKSM) Status() ksm.Status { return k.st }

// TestCollectorKSM: with a throttler, its state is an enum gauge and its
// counters follow.
func TestCollectorKSM(t *testing.T) {
	since := time.Unix(1700000000, 0)
	ts := newTestServer(t, fakeKSM{ksm.Status{
		Running: true, State: ksm.Standard, Since: since,
		Counters: ksm.Counters{PagesShared: 10, PagesSharing: 90, FullScans: 4, GeneralProfit: 1 << 20},
		Process:  &ksm.ProcStat{MergingPages: 100},
		Exports:  []ksm.ExportStatus{{Name: "mem", Bytes: 1 << 20, MergedBytes: 4096}},
	}})
	f, err := scrape.Get(nil, ts.url)
	require.NoError(t, err)
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"nbdd_ksm_state", []string{"state", "standard"}, 1},
		{"nbdd_ksm_state", []string{"state", "idle"}, 0},
		{"nbdd_ksm_state", []string{"state", "aggressive"}, 0},
		{"nbdd_ksm_state_since_seconds", nil, 1700000000},
		{"nbdd_ksm_pages_shared", nil, 10},
		{"nbdd_ksm_pages_sharing", nil, 90},
		{"nbdd_ksm_full_scans_total", nil, 4},
		{"nbdd_ksm_general_profit_bytes", nil, 1 << 20},
		{"nbdd_ksm_process_merging_pages", nil, 100},
		{"nbdd_ksm_export_merged_bytes", []string{"export", "mem"}, 4096},
	} {
		got, ok := f.Value(tt.name, tt.labels...)
		require.True(t, ok, "%s %v missing", tt.name, tt.labels)
		require.Equal(t, tt.want, got, "%s %v", tt.name, tt.labels)
	}
}

// TestCollectorLint: every metric follows Prometheus's naming rules, as
// promtool check metrics applies them.
func TestCollectorLint(t *testing.T) {
	ts := newTestServer(t, fakeKSM{ksm.Status{Process: &ksm.ProcStat{}, Exports: []ksm.ExportStatus{{Name: "mem"}}}})
	ts.do(t, protocol.CmdRead, 1, 0, 4096, nil)
	problems, err := testutil.CollectAndLint(metrics.NewCollector(metrics.Config{Server: ts.srv,
		KSM: fakeKSM{ksm.Status{Process: &ksm.ProcStat{}}}}))
	require.NoError(t, err)
	require.Empty(t, problems)
}
