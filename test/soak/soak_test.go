package soak

import (
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
)

// soakConfig is the size of one TestSoak run.
type soakConfig struct {
	conns    int           // connections, each owning one region of the export
	depth    int           // requests in flight per connection
	region   int           // bytes each connection owns
	maxIO    int           // largest READ or WRITE; the smallest is 512 bytes
	duration time.Duration // random I/O time, split evenly across the strategies
	budget   int64         // the buffer strategy's memory budget
	seed     uint64
}

// soakSize is the default run: 10 s in all, scaled down under the race
// detector so that go test -race ./test/soak/ stays well within 90 s on
// two shared cores. NBDD_SOAK_DURATION (a time.Duration) lengthens it.
func soakSize(t *testing.T) soakConfig {
	t.Helper()
	c := soakConfig{
		conns: 200, depth: 4, region: 1 << 20, maxIO: 256 << 10,
		duration: 10 * time.Second, budget: server.DefaultBudget, seed: 1,
	}
	if raceEnabled {
		c.region, c.maxIO, c.duration = 256<<10, 64<<10, 6*time.Second
	}
	if s := os.Getenv("NBDD_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("NBDD_SOAK_DURATION=%q: want a positive duration such as 10m", s)
		}
		c.duration = d
	}
	return c
}

// replyTimeout bounds the wait for any one reply.
const replyTimeout = 30 * time.Second

// soakStats are one connection's counters; the test adds them up.
type soakStats struct {
	requests, reads, writes, flushes, trims, zeroes int64
	bytesWritten, bytesVerified                     int64
	corruptions, errnos                             int64
	firstProblem                                    string
}

func (s *soakStats) add(o *soakStats) {
	s.requests += o.requests
	s.reads += o.reads
	s.writes += o.writes
	s.flushes += o.flushes
	s.trims += o.trims
	s.zeroes += o.zeroes
	s.bytesWritten += o.bytesWritten
	s.bytesVerified += o.bytesVerified
	s.corruptions += o.corruptions
	s.errnos += o.errnos
	if s.firstProblem == "" {
		s.firstProblem = o.firstProblem
	}
}

func (s *soakStats) problem(format string, args ...any) {
	if s.firstProblem == "" {
		s.firstProblem = fmt.Sprintf(format, args...)
	}
}

// TestSoak runs 200 connections of mixed, verified I/O against one export
// for a fixed time under each buffer strategy, on a memory
// export with its capabilities hidden so that every payload goes through
// the strategy; then once more on a plain memory export, whose READs and
// WRITEs go straight between the socket and its pages.
// Each connection owns a disjoint region, keeps a shadow copy of it and
// pipelines several requests whose ranges never overlap (NBD does not
// order requests in flight): WRITEs of random data and random size,
// READs whose checksum must match the shadow, and occasional FLUSH, TRIM
// and WRITE_ZEROES. At the end every connection reads its whole region
// back. The server must report no error, return every byte of its budget
// and leave no goroutine behind, and the heap must stay within the budget
// plus the export, the shadows and 256 MiB.
func TestSoak(t *testing.T) {
	skipShort(t)
	cfg := soakSize(t)
	raiseFileLimit(t, uint64(4*cfg.conns+256))
	var total soakStats
	var peakHeap uint64
	start := time.Now()
	runs := append(append([]string{}, strategies...), "lent")
	for i, name := range runs {
		t.Run(name, func(t *testing.T) {
			strategy, lent := name, name == "lent"
			if lent {
				strategy = bufstrategy.NamePool
			}
			st, heap := runSoak(t, cfg, strategy, lent, cfg.seed+uint64(i), cfg.duration/time.Duration(len(runs)))
			total.add(&st)
			peakHeap = max(peakHeap, heap)
		})
	}
	summarize(t, "%d connections x (%d strategies + memory pages lent) for %v (race %v): %d requests, %s written, %s verified, "+
		"%d corruptions, %d error replies, peak heap in use %s, VmHWM %s (process lifetime, includes the test client)",
		cfg.conns, len(strategies), time.Since(start).Round(time.Millisecond), raceEnabled, total.requests,
		mib(total.bytesWritten), mib(total.bytesVerified), total.corruptions, total.errnos,
		mib(int64(peakHeap)), mib(procStatus("VmHWM")))
}

// runSoak is one strategy's share of TestSoak, on a plain export unless
// lent is set. It returns the counters and the peak heap in use.
func runSoak(t *testing.T, cfg soakConfig, strategy string, lent bool, seed uint64, d time.Duration) (soakStats, uint64) {
	base := goroutineBaseline()
	f, budget := newFactory(t, strategy, cfg.budget)
	logger, warns := quietLogger()
	exportSize := int64(cfg.conns) * int64(cfg.region)
	var b backend.Backend = unlent{plain{backend.NewMemory(exportSize)}}
	if lent {
		b = backend.NewMemory(exportSize)
	}
	srv := &server.Server{
		Exports: []server.Export{{Name: "soak", Backend: b}},
		Buffers: f,
		Logger:  logger,
	}
	mem := sampleMemory(srv.BufferStats)
	r := serveUnix(t, srv)

	conns := make([]*soakConn, cfg.conns)
	errs := parallel(cfg.conns, 32, func(i int) error {
		c, err := r.dial()
		if err != nil {
			return err
		}
		if c.size != uint64(exportSize) {
			c.nc.Close()
			return fmt.Errorf("export size %d; want %d", c.size, exportSize)
		}
		conns[i] = newSoakConn(c, i, cfg, seed)
		return nil
	})
	if n, first := firstErrors(errs); n > 0 {
		t.Fatalf("connecting %d clients: %d failed: %s", cfg.conns, n, first)
	}

	start := time.Now()
	errs = parallel(cfg.conns, cfg.conns, func(i int) error { return conns[i].run(start.Add(d)) })
	elapsed := time.Since(start)
	if n, first := firstErrors(errs); n > 0 {
		t.Errorf("connections failed: %d of %d: %s", n, cfg.conns, first)
	}
	var st soakStats
	for _, c := range conns {
		st.add(&c.st)
	}

	r.shutdown(t, 10*time.Second)
	stats := srv.BufferStats()
	if stats.BytesInUse != 0 {
		t.Errorf("buffer bytes in use after shutdown: got %d; want 0", stats.BytesInUse)
	}
	f.Close()
	peak := mem.stop()
	goroutines := checkGoroutines(t, base, 10*time.Second)

	if st.corruptions != 0 || st.errnos != 0 {
		t.Errorf("got %d corruptions and %d error replies; want 0 and 0 (first: %s)", st.corruptions, st.errnos, st.firstProblem)
	}
	if n := budget.InUse(); n != 0 {
		t.Errorf("budget in use after shutdown: got %d bytes; want 0", n)
	}
	if peak.bufInUse > cfg.budget {
		t.Errorf("peak buffer bytes in use: got %s; want <= budget %s", mib(peak.bufInUse), mib(cfg.budget))
	}
	// The client's shadows, one region per connection, live in the same
	// heap as the server.
	client := exportSize
	bound := uint64(cfg.budget + exportSize + client + 256<<20)
	if peak.heapInuse > bound {
		t.Errorf("peak heap in use: got %s; want <= %s (budget %s + export %s + test client %s + 256 MiB)",
			mib(int64(peak.heapInuse)), mib(int64(bound)), mib(cfg.budget), mib(exportSize), mib(client))
	}
	t.Logf("%s: %v, %d requests (%d reads, %d writes, %d flushes, %d trims, %d write_zeroes), %s written, %s verified, "+
		"%d corruptions, %d error replies; buffers %+v; server %v",
		strategy, elapsed.Round(time.Millisecond), st.requests, st.reads, st.writes, st.flushes, st.trims, st.zeroes,
		mib(st.bytesWritten), mib(st.bytesVerified), st.corruptions, st.errnos, stats, warns)
	t.Logf("%s: peak buffers in use %s, held %s (budget %s); peak heap in use %s (bound %s), peak Sys %s, "+
		"peak VmRSS %s (includes the test client); goroutines %d after shutdown (baseline %d); %d memory samples",
		strategy, mib(peak.bufInUse), mib(peak.bufHeld), mib(cfg.budget), mib(int64(peak.heapInuse)), mib(int64(bound)),
		mib(int64(peak.sys)), mib(peak.rss), goroutines, base, peak.samples)
	return st, peak.heapInuse
}

// soakOp is one request of a soakConn.
type soakOp struct {
	req   protocol.Request
	want  uint32 // a READ's expected CRC-32C, from the shadow when sent
	got   uint32 // a READ's CRC-32C as received, set by the reply reader
	errno protocol.Errno
}

func (o *soakOp) overlaps(p *soakOp) bool {
	a, b := o.req, p.req
	return a.Length > 0 && b.Length > 0 &&
		a.Offset < b.Offset+uint64(b.Length) && b.Offset < a.Offset+uint64(a.Length)
}

// soakConn is one soak client. Its goroutine (run) sends requests and
// checks replies; a second goroutine (readReplies) reads them off the
// socket, so the client never stops draining replies while it writes.
type soakConn struct {
	c      *client
	cfg    soakConfig
	base   uint64 // the region's offset in the export
	shadow []byte // what the region must hold; owned by run
	rng    *rand.Rand
	fill   *rand.ChaCha8
	free   []*soakOp
	active []*soakOp // requests in flight
	cookie uint64
	timer  *time.Timer
	st     soakStats

	mu      sync.Mutex
	pending map[uint64]*soakOp // by cookie; guarded by mu

	done       chan *soakOp  // answered requests, from readReplies
	readerDone chan struct{} // closed when readReplies returns
	readerErr  error         // why readReplies returned; set before readerDone closes
}

func newSoakConn(c *client, i int, cfg soakConfig, seed uint64) *soakConn {
	var key [32]byte
	key[0], key[1], key[2] = byte(i), byte(i>>8), byte(seed)
	w := &soakConn{
		c: c, cfg: cfg,
		base:       uint64(i) * uint64(cfg.region),
		shadow:     make([]byte, cfg.region),
		rng:        rand.New(rand.NewPCG(seed, uint64(i))),
		fill:       rand.NewChaCha8(key),
		pending:    make(map[uint64]*soakOp),
		done:       make(chan *soakOp, cfg.depth),
		readerDone: make(chan struct{}),
	}
	for range cfg.depth {
		w.free = append(w.free, &soakOp{})
	}
	return w
}

// run does random I/O until deadline, then reads the whole region back,
// disconnects and waits for the reply reader.
func (w *soakConn) run(deadline time.Time) error {
	w.timer = time.NewTimer(replyTimeout)
	defer w.timer.Stop()
	go w.readReplies()
	err := w.random(deadline)
	if err == nil {
		err = w.readBack()
	}
	for err == nil && len(w.active) > 0 {
		err = w.complete()
	}
	if err != nil {
		w.c.nc.Close()
		<-w.readerDone
		return fmt.Errorf("connection %d: %w", w.base/uint64(w.cfg.region), err)
	}
	if err := w.c.disconnect(); err != nil {
		return err
	}
	<-w.readerDone
	return nil
}

// random sends random requests, keeping up to cfg.depth in flight.
func (w *soakConn) random(deadline time.Time) error {
	for time.Now().Before(deadline) {
		if len(w.free) == 0 {
			if err := w.complete(); err != nil {
				return err
			}
			continue
		}
		o := w.free[len(w.free)-1]
		w.pick(o)
		if w.blocked(o) {
			if err := w.complete(); err != nil {
				return err
			}
			continue
		}
		w.free = w.free[:len(w.free)-1]
		if err := w.send(o); err != nil {
			return err
		}
	}
	return nil
}

// readBack reads the whole region in cfg.maxIO pieces, verifying each.
func (w *soakConn) readBack() error {
	for off := 0; off < w.cfg.region; off += w.cfg.maxIO {
		for len(w.free) == 0 {
			if err := w.complete(); err != nil {
				return err
			}
		}
		o := w.free[len(w.free)-1]
		w.free = w.free[:len(w.free)-1] // before complete appends to free
		o.req = protocol.Request{Type: protocol.CmdRead, Offset: w.base + uint64(off), Length: uint32(min(w.cfg.maxIO, w.cfg.region-off))}
		for w.blocked(o) {
			if err := w.complete(); err != nil {
				return err
			}
		}
		if err := w.send(o); err != nil {
			return err
		}
	}
	return nil
}

// pick chooses o's request: 45% WRITE, 45% READ, and FLUSH, TRIM and
// WRITE_ZEROES for the rest.
func (w *soakConn) pick(o *soakOp) {
	n := w.size()
	off := w.base + uint64(w.rng.IntN((w.cfg.region-n)/512+1)*512)
	req := protocol.Request{Offset: off, Length: uint32(n)}
	switch p := w.rng.IntN(100); {
	case p < 45:
		req.Type = protocol.CmdWrite
		if p < 3 {
			req.Flags = protocol.CmdFlagFUA
		}
	case p < 90:
		req.Type = protocol.CmdRead
	case p < 93:
		req = protocol.Request{Type: protocol.CmdFlush}
	case p < 97:
		req.Type = protocol.CmdTrim
	default:
		req.Type = protocol.CmdWriteZeroes
		if p == 99 {
			req.Flags = protocol.CmdFlagNoHole
		}
	}
	o.req = req
}

// size returns a request length of 512 bytes to cfg.maxIO, a multiple of
// 512, log-uniformly distributed so that small requests are common and
// large ones frequent enough to fill the budget.
func (w *soakConn) size() int {
	n := 512 << w.rng.IntN(10)
	n += w.rng.IntN(n/512) * 512
	return min(n, w.cfg.maxIO)
}

// blocked reports whether o overlaps a request in flight.
func (w *soakConn) blocked(o *soakOp) bool {
	for _, a := range w.active {
		if o.overlaps(a) {
			return true
		}
	}
	return false
}

// send writes o to the socket. The shadow changes as soon as a WRITE,
// TRIM or WRITE_ZEROES is sent: no request that could observe the range
// is sent before that one's reply.
func (w *soakConn) send(o *soakOp) error {
	w.cookie++
	o.req.Cookie = w.cookie
	var payload []byte
	lo, hi := o.req.Offset-w.base, o.req.Offset-w.base+uint64(o.req.Length)
	switch o.req.Type {
	case protocol.CmdWrite:
		payload = w.shadow[lo:hi]
		w.fill.Read(payload)
	case protocol.CmdTrim, protocol.CmdWriteZeroes:
		// The memory backend zeroes trimmed ranges (backend.Memory.Trim).
		clear(w.shadow[lo:hi])
	case protocol.CmdRead:
		o.want = crc32.Checksum(w.shadow[lo:hi], castagnoli)
	}
	w.mu.Lock()
	w.pending[o.req.Cookie] = o
	w.mu.Unlock()
	w.active = append(w.active, o)
	var hdr [protocol.RequestSize]byte
	o.req.Put(&hdr)
	w.c.nc.SetWriteDeadline(time.Now().Add(replyTimeout))
	if _, err := (&net.Buffers{hdr[:], payload}).WriteTo(w.c.nc); err != nil {
		return fmt.Errorf("send %v: %w", o.req.Type, err)
	}
	return nil
}

// complete waits for one reply and checks it.
func (w *soakConn) complete() error {
	w.timer.Reset(replyTimeout)
	select {
	case o := <-w.done:
		w.check(o)
		for i, a := range w.active {
			if a == o {
				w.active = append(w.active[:i], w.active[i+1:]...)
				break
			}
		}
		w.free = append(w.free, o)
		return nil
	case <-w.readerDone:
		return fmt.Errorf("reading replies: %w", w.readerErr)
	case <-w.timer.C:
		return fmt.Errorf("no reply within %v, %d requests in flight", replyTimeout, len(w.active))
	}
}

// check counts an answered request and verifies a READ's data against the
// shadow by checksum.
func (w *soakConn) check(o *soakOp) {
	w.st.requests++
	req := o.req
	if o.errno != protocol.EOK {
		w.st.errnos++
		w.st.problem("%v at %d+%d: %v", req.Type, req.Offset, req.Length, o.errno)
		return
	}
	switch req.Type {
	case protocol.CmdWrite:
		w.st.writes++
		w.st.bytesWritten += int64(req.Length)
	case protocol.CmdFlush:
		w.st.flushes++
	case protocol.CmdTrim:
		w.st.trims++
	case protocol.CmdWriteZeroes:
		w.st.zeroes++
	case protocol.CmdRead:
		w.st.reads++
		if o.got != o.want {
			w.st.corruptions++
			w.st.problem("READ at %d+%d: CRC-32C %08x; want %08x", req.Offset, req.Length, o.got, o.want)
			return
		}
		w.st.bytesVerified += int64(req.Length)
	}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readReplies reads replies until the connection ends, matching each to
// its request by cookie.
func (w *soakConn) readReplies() {
	defer close(w.readerDone)
	for {
		o, err := w.readReply()
		if err != nil {
			w.readerErr = err
			return
		}
		w.done <- o
	}
}

func (w *soakConn) readReply() (*soakOp, error) {
	var rh [protocol.SimpleReplySize]byte
	if _, err := io.ReadFull(w.c.br, rh[:]); err != nil {
		return nil, err
	}
	r, err := protocol.DecodeSimpleReply(&rh)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	o := w.pending[r.Cookie]
	delete(w.pending, r.Cookie)
	w.mu.Unlock()
	if o == nil {
		return nil, fmt.Errorf("reply for cookie %d, which is not in flight", r.Cookie)
	}
	o.errno = r.Error
	if r.Error == protocol.EOK && o.req.Type == protocol.CmdRead {
		// Checksum the data as it streams in: the client holds no copy
		// of it, so its memory does not hide the server's in the heap.
		h := crc32.New(castagnoli)
		if _, err := io.CopyN(h, w.c.br, int64(o.req.Length)); err != nil {
			return nil, fmt.Errorf("read data of cookie %d: %w", r.Cookie, err)
		}
		o.got = h.Sum32()
	}
	return o, nil
}
