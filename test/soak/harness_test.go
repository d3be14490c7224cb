// Package soak runs nbdd's server in process under load for a fixed time,
// over real unix and TCP sockets, and checks the promises that only show
// up at scale: no corruption under 200 pipelining connections, bounded
// memory and continued service with 1000 stalled writers, and connection
// limits and timeouts. Each test
// ends with a "summary:" log line whose figures docs/reliability.md
// quotes; TestMain prints them all again at the end.
//
// Every wait is bounded, so a server that hangs fails the test with what
// it was waiting for instead of timing the whole run out.
package soak

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/server"
)

func TestMain(m *testing.M) {
	code := m.Run()
	summaries.mu.Lock()
	defer summaries.mu.Unlock()
	if len(summaries.lines) > 0 {
		fmt.Println("soak summary (race detector:", raceEnabled, "):")
		for _, l := range summaries.lines {
			fmt.Println("  " + l)
		}
	}
	os.Exit(code)
}

// summaries collects every test's summary line for TestMain to print.
var summaries struct {
	mu    sync.Mutex
	lines []string
}

// summarize logs a test's figures as its final line and keeps them for
// TestMain.
func summarize(t *testing.T, format string, args ...any) {
	t.Helper()
	line := t.Name() + ": " + fmt.Sprintf(format, args...)
	t.Log("summary: " + line)
	summaries.mu.Lock()
	summaries.lines = append(summaries.lines, line)
	summaries.mu.Unlock()
}

// skipShort skips a long test under -short, except in CI, where the soak
// runs at its bounded default size.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("soak test skipped under -short (CI runs it)")
	}
}

// strategies are the buffer policies every load test runs under.
var strategies = bufstrategy.Names()

// plain hides every optional capability of a backend, as a backend written
// for go-nbd has none. A backend.Memory lends its pages for READs and
// WRITEs over sockets and so uses no buffers at all; behind plain, every
// payload goes through the buffer strategy and its budget, which is what
// the soak tests load.
type plain struct{ backend.Backend }

// unlent is plain plus TRIM and WRITE_ZEROES, which the soak's clients
// send: a memory export whose payloads all go through the strategy.
type unlent struct{ plain }

func (u unlent) Trim(off, n int64) error { return u.Backend.(backend.Trimmer).Trim(off, n) }

func (u unlent) WriteZeroes(off, n int64, noHole, fast bool) error {
	return u.Backend.(backend.Zeroer).WriteZeroes(off, n, noHole, fast)
}

// newFactory builds the named policy under a budget of its own, so the
// test can watch the budget.
func newFactory(t *testing.T, name string, budget int64) (bufstrategy.Factory, *bufstrategy.Budget) {
	t.Helper()
	b, err := bufstrategy.NewBudget(budget)
	if err != nil {
		t.Fatal(err)
	}
	f, err := bufstrategy.New(name, bufstrategy.Config{Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	return f, b
}

// quietLogger drops the server's per-connection logs, which at hundreds of
// connections would bury the test output; warnings are counted.
func quietLogger() (*slog.Logger, *warnCounter) {
	w := &warnCounter{}
	return slog.New(w), w
}

// warnCounter is a slog.Handler that counts records at Warn and above and
// keeps the first few.
type warnCounter struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnCounter) WithGroup(string) slog.Handler                { return w }

func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
	if len(w.first) < 3 {
		msg := r.Message
		r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
		w.first = append(w.first, msg)
	}
	return nil
}

func (w *warnCounter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%d warnings %q", w.n, w.first)
}

// running is a server serving one listener.
type running struct {
	srv     *server.Server
	network string
	addr    string
	served  chan error // Serve's result
}

// serveUnix serves srv on a unix socket in a fresh temporary directory.
// Cleanup closes the server if the test has not shut it down.
func serveUnix(t *testing.T, srv *server.Server) *running {
	t.Helper()
	// t.TempDir can exceed the 107-byte limit of a socket path.
	dir, err := os.MkdirTemp("", "soak")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return serve(t, srv, "unix", filepath.Join(dir, "s"))
}

func serve(t *testing.T, srv *server.Server, network, addr string) *running {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{srv: srv, network: network, addr: l.Addr().String(), served: make(chan error, 1)}
	go func() { r.served <- srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return r
}

// dial connects a client to the server and negotiates the default export.
func (r *running) dial() (*client, error) { return dial(r.network, r.addr) }

// shutdown stops the server gracefully within d and checks Serve's result.
func (r *running) shutdown(t *testing.T, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: got %v; want nil", err)
	}
	select {
	case err := <-r.served:
		if !errors.Is(err, server.ErrServerClosed) {
			t.Errorf("Serve: got %v; want ErrServerClosed", err)
		}
	case <-time.After(d):
		t.Errorf("Serve still running %v after Shutdown", d)
	}
}

// goroutineBaseline is the goroutine count before a test starts its
// server and clients.
func goroutineBaseline() int { return runtime.NumGoroutine() }

// checkGoroutines polls until the goroutine count is back to base, and
// fails with the surplus goroutines' stacks if it is not within d. It
// returns the count it last saw.
func checkGoroutines(t *testing.T, base int, d time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return n
		}
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&buf, 1)
			s := buf.String()
			if len(s) > 8000 {
				s = s[:8000] + "\n..."
			}
			t.Errorf("goroutines %v after teardown: got %d; want <= %d (baseline)\n%s", d, n, base, s)
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// memPeak samples the Go heap, the process RSS and the server's buffer
// counters every 100 ms until stop is called, and keeps the peaks.
type memPeak struct {
	done  chan struct{}
	wg    sync.WaitGroup
	stats func() bufstrategy.Stats // the server's BufferStats, or nil

	mu        sync.Mutex
	heapInuse uint64 // peak runtime.MemStats.HeapInuse
	sys       uint64 // peak runtime.MemStats.Sys
	rss       int64  // peak VmRSS, bytes
	bufInUse  int64  // peak Stats.BytesInUse: buffers handed out, charged to the budget
	bufHeld   int64  // peak Stats.BytesHeld: buffers allocated, in use or idle
	samples   int
}

// sampleMemory starts sampling after a garbage collection, so that the
// garbage of an earlier test does not count. stats may be nil.
func sampleMemory(stats func() bufstrategy.Stats) *memPeak {
	runtime.GC()
	debug.FreeOSMemory()
	m := &memPeak{done: make(chan struct{}), stats: stats}
	m.sample()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-m.done:
				return
			case <-tick.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *memPeak) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss := procStatus("VmRSS")
	var st bufstrategy.Stats
	if m.stats != nil {
		st = m.stats()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bufInUse = max(m.bufInUse, st.BytesInUse)
	m.bufHeld = max(m.bufHeld, st.BytesHeld)
	m.heapInuse = max(m.heapInuse, ms.HeapInuse)
	m.sys = max(m.sys, ms.Sys)
	m.rss = max(m.rss, rss)
	m.samples++
}

// stop ends sampling (taking one last sample) and returns the peaks.
func (m *memPeak) stop() *memPeak {
	close(m.done)
	m.wg.Wait()
	m.sample()
	return m
}

// procStatus returns a kB field of /proc/self/status in bytes (VmRSS, the
// current resident set; VmHWM, its peak over the process's life), or -1
// where /proc is missing.
func procStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return -1
		}
		return kb << 10
	}
	return -1
}

// mib formats a byte count in MiB.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// raiseFileLimit lifts the soft RLIMIT_NOFILE towards the hard limit so
// that at least want descriptors can be open, and fails if it cannot.
func raiseFileLimit(t *testing.T, want uint64) {
	t.Helper()
	if err := setFileLimit(want); err != nil {
		t.Fatalf("need %d file descriptors: %v", want, err)
	}
}

// setFileLimit raises the soft RLIMIT_NOFILE to want, within the hard
// limit.
func setFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= want {
		return nil
	}
	if lim.Max < want {
		return fmt.Errorf("hard RLIMIT_NOFILE is %d", lim.Max)
	}
	lim.Cur = want
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// parallel runs f(i) for i in [0, n) on at most width goroutines and
// returns the errors, indexed like i.
func parallel(n, width int, f func(i int) error) []error {
	errs := make([]error, n)
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errs
}

// firstErrors summarises the non-nil errors of errs: how many and the
// first few.
func firstErrors(errs []error) (int, string) {
	var n int
	var first []string
	for i, err := range errs {
		if err == nil {
			continue
		}
		n++
		if len(first) < 3 {
			first = append(first, fmt.Sprintf("#%d: %v", i, err))
		}
	}
	return n, strings.Join(first, "; ")
}
