package server

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/stretchr/testify/require"
)

// ioTimeout bounds every client read and write, so a server bug shows up
// as a failure rather than a hung test.
const ioTimeout = 5 * time.Second

// run runs f once per buffer strategy, as net/http's run(t, f) runs its
// tests once per mode: every server test must hold whatever the buffer
// policy.
func run(t *testing.T, f func(t *testing.T, strategy string)) {
	t.Helper()
	for _, name := range bufstrategy.Names() {
		t.Run(name, func(t *testing.T) { f(t, name) })
	}
}

// bufferConfig tunes the buffer factory a test server gets.
type bufferConfig struct {
	budget      int64 // server-wide budget in bytes; 0 means none
	streamChunk int   // stream chunk; 0 means bufstrategy.MinChunk
}

// newFactory returns the named buffer factory for a server whose largest
// request is maxRequest, closed when the test ends. The stream chunk
// defaults to the smallest one allowed (4 KiB), so any request above 4 KiB
// takes the streaming paths under "stream". The idle reclaimer is off: it
// is a goroutine of its own and would upset the leak check.
func newFactory(t testing.TB, strategy string, maxRequest uint32, bc bufferConfig) bufstrategy.Factory {
	t.Helper()
	cfg := bufstrategy.Config{
		MaxRequest:  int(maxRequest),
		StreamChunk: bc.streamChunk,
		ReclaimTick: -1,
	}
	if cfg.StreamChunk == 0 {
		cfg.StreamChunk = bufstrategy.MinChunk
	}
	if bc.budget > 0 {
		b, err := bufstrategy.NewBudget(bc.budget)
		require.NoError(t, err)
		cfg.Budget = b
	}
	f, err := bufstrategy.New(strategy, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// testLogger sends the server's log lines to t.Log at debug level, and
// drops them once the test has finished (t.Log would panic then).
func testLogger(t testing.TB) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLogWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done && testing.Verbose() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// checkLeaks fails the test if goroutines started during it are still
// running at the end, after a short grace period (net/http afterTest).
// Call it first, so its cleanup runs after every other.
func checkLeaks(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutines: got %d after the test; want at most %d (before it)\n%s", n, before, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// countingConn counts the bytes the server reads from the client, to prove
// that lengths are bounded before anything is read or allocated.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// serverTester drives one server connection over net.Pipe with the
// protocol package as the client codec (x/net http2 server_common_test.go).
type serverTester struct {
	*client
	srv    *Server
	sc     *countingConn // the server's end
	cancel context.CancelFunc
	done   chan error // ServeConn's result
}

// newServerTester starts srv.ServeConn on one end of a pipe. Zero fields of
// srv get test defaults: a 1 MiB memory export named "mem", the strategy's
// buffer factory and a logger that writes to t.Log. It does not read the
// greeting: see start.
func newServerTester(t testing.TB, strategy string, srv *Server, bc ...bufferConfig) *serverTester {
	t.Helper()
	checkLeaks(t)
	if srv == nil {
		srv = &Server{}
	}
	if srv.Exports == nil && srv.Source == nil {
		srv.Exports = []Export{{Name: "mem", Backend: backend.NewMemory(1 << 20)}}
	}
	if srv.Buffers == nil && strategy != "" {
		var cfg bufferConfig
		if len(bc) > 0 {
			cfg = bc[0]
		}
		srv.Buffers = newFactory(t, strategy, srv.maxRequestSize(), cfg)
	}
	if srv.Logger == nil {
		srv.Logger = testLogger(t)
	}
	cc, sc := net.Pipe()
	st := &serverTester{
		client: newClient(t, cc),
		srv:    srv,
		sc:     &countingConn{Conn: sc},
		done:   make(chan error, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	st.cancel = cancel
	go func() { st.done <- srv.ServeConn(ctx, st.sc) }()
	t.Cleanup(func() {
		cc.Close()
		cancel()
		select {
		case <-st.done:
		case <-time.After(ioTimeout):
			t.Errorf("ServeConn did not return %v after the client closed", ioTimeout)
		}
	})
	return st
}

// wantServeResult waits for ServeConn to return and checks its error.
func (st *serverTester) wantServeResult(check func(error) bool, desc string) {
	st.t.Helper()
	select {
	case err := <-st.done:
		st.done <- err // keep it for the cleanup
		if !check(err) {
			st.t.Fatalf("ServeConn: got %v; want %s", err, desc)
		}
	case <-time.After(ioTimeout):
		st.t.Fatalf("ServeConn did not return within %v", ioTimeout)
	}
}

// wantClosed checks that the server closed the connection without sending
// anything more, and that ServeConn returned.
func (st *serverTester) wantClosed() {
	st.t.Helper()
	st.client.wantClosed()
	select {
	case err := <-st.done:
		st.done <- err
	case <-time.After(ioTimeout):
		st.t.Fatalf("ServeConn did not return within %v of closing", ioTimeout)
	}
}

// exportStats returns srv's counters of the export named name, zero if
// no connection has selected it.
func exportStats(srv *Server, name string) ExportStats {
	es, _ := srv.Stats().Export(name)
	return es
}

// serveExportD serves b as export "d" on a unix socket and returns the
// server and a client past the handshake, with structured replies if sr.
func serveExportD(t *testing.T, strategy string, size int64, b backend.Backend, sr bool) (*Server, *client) {
	t.Helper()
	srv := socketServer(t, strategy, size, bufferConfig{})
	srv.Exports = []Export{{Name: "d", Backend: b}}
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	if sr {
		c.handshakeSR("d")
	} else {
		c.handshake("d")
	}
	return srv, c
}

// readsOnReader counts the READs of export name that the reader ran
// itself.
func readsOnReader(srv *Server, name string) int64 {
	var n int64
	for p, ps := range exportStats(srv, name).Paths {
		if p.reads() {
			n += ps.OnReader
		}
	}
	return n
}

// ---- backends for tests ----

// pattern returns n bytes that differ at every offset and between seeds,
// so a misplaced or stale byte shows.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>8) ^ seed
	}
	return b
}

// probe wraps a backend and counts what the server does to it: Sync
// calls, and the peak of concurrent ReadAt calls. With a gate, ReadAt
// calls that gated selects (all, if it is nil) wait until the gate is
// closed, so a test decides when a "slow" request finishes instead of
// guessing with a delay. A probe hides every optional capability of the
// wrapped backend.
type probe struct {
	backend.Backend
	syncs   atomic.Int64
	reads   atomic.Int64
	cur     atomic.Int64
	peak    atomic.Int64
	started chan int64 // if not nil, gets each ReadAt's offset as it starts
	gate    chan struct{}
	gated   func(off int64) bool
}

// newGatedProbe returns a probe over a 1 MiB memory export whose reads
// in gated wait for release, which the test must call (it is also called
// when the test ends, so no goroutine stays blocked).
func newGatedProbe(t testing.TB, gated func(off int64) bool) (p *probe, release func()) {
	p = &probe{Backend: backend.NewMemory(1 << 20), started: make(chan int64, 1024), gate: make(chan struct{}), gated: gated}
	var once sync.Once
	release = func() { once.Do(func() { close(p.gate) }) }
	t.Cleanup(release)
	return p, release
}

func (p *probe) ReadAt(b []byte, off int64) (int, error) {
	p.reads.Add(1)
	n := p.cur.Add(1)
	defer p.cur.Add(-1)
	for {
		old := p.peak.Load()
		if n <= old || p.peak.CompareAndSwap(old, n) {
			break
		}
	}
	if p.started != nil {
		p.started <- off
	}
	if p.gate != nil && (p.gated == nil || p.gated(off)) {
		<-p.gate
	}
	return p.Backend.ReadAt(b, off)
}

func (p *probe) Sync() error {
	p.syncs.Add(1)
	return p.Backend.Sync()
}

// bare hides every optional capability of a backend: what a plain go-nbd
// style backend offers.
type bare struct{ backend.Backend }
