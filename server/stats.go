package server

import (
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
)

// Stats is a snapshot of a server's counters, as Server.Stats returns it.
// Every count is cumulative since the server started, except Conns; a
// metrics exporter reports them as counters.
type Stats struct {
	// Conns is the number of connections open now, in the handshake or
	// in the transmission phase.
	Conns int
	// Exports has one entry per export name that a connection has
	// selected since the server started, sorted by name.
	Exports []ExportStats
	// Buffers are the buffer strategy's counters (see BufferStats).
	Buffers bufstrategy.Stats
	// Accepted counts the connections served: those that passed
	// MaxConns, MaxConnsPerHost and Access.Addrs.
	Accepted int64
	// RefusedLimit counts the connections closed at once because of
	// MaxConns or MaxConnsPerHost; RefusedAddr those from an address
	// Access.Addrs does not allow.
	RefusedLimit, RefusedAddr int64
	// RefusedExport counts export selections (NBD_OPT_GO, NBD_OPT_INFO,
	// NBD_OPT_EXPORT_NAME) refused by an export's access lists.
	RefusedExport int64
}

// connCounters are the server's counts of connections accepted and
// refused (Stats).
type connCounters struct {
	accepted, refusedLimit, refusedAddr, refusedExport atomic.Int64
}

// ExportStats are the counters of one export, summed over every
// connection that selected it.
type ExportStats struct {
	Name string
	// Conns counts the connections that entered the transmission phase
	// with this export.
	Conns int64
	// Requests counts the requests read whole, by command (NBD_CMD_DISC,
	// which has no reply, is not counted), whether they succeeded, failed
	// or were refused. Every command the server knows has an entry.
	Requests map[protocol.Cmd]int64
	// UnknownCmds counts requests of commands the server does not know
	// (answered with NBD_EINVAL, also counted in Errors).
	UnknownCmds int64
	// Errors counts error replies by NBD errno (proto.md "Error values").
	// Every errno the server sends has an entry.
	Errors map[protocol.Errno]int64
	// ReadBytes and WriteBytes are the payload bytes of the READs and
	// WRITEs that succeeded: the sum of Paths' Bytes over the read paths
	// and over the write paths.
	ReadBytes, WriteBytes int64
	// HoleBytes are the bytes of successful READs that went out as
	// OFFSET_HOLE chunks (proto.md "NBD_REPLY_TYPE_OFFSET_HOLE"): part of
	// ReadBytes, but never sent.
	HoleBytes int64
	// Aborted counts READs cut off by a hard disconnect: the backend
	// failed after a simple reply's header had gone out, which the
	// client cannot be told (proto.md "Simple reply message").
	Aborted int64
	// Paths has the requests whose data took each path; every Path but
	// PathNone has an entry.
	Paths map[Path]PathStats
	// Latency has the time from each request's header being read to its
	// reply being written, by command; every command in Requests has an
	// entry. Requests whose reply was never written (the connection
	// failed first) are not in it.
	Latency map[protocol.Cmd]LatencyStats
}

// LatencyBuckets is the number of finite buckets of a LatencyStats.
const LatencyBuckets = 23

// LatencyBound returns the upper bound of latency bucket i, for i below
// LatencyBuckets: 4µs doubled i times, from 4µs to about 16.8s.
func LatencyBound(i int) time.Duration { return 4 * time.Microsecond << i }

// LatencyStats is a histogram of request latencies.
type LatencyStats struct {
	// Counts[i] counts the requests that took more than
	// LatencyBound(i-1) and at most LatencyBound(i); the last entry
	// counts those that took longer than every bound.
	Counts [LatencyBuckets + 1]int64
	// Sum is the total time of the requests counted.
	Sum time.Duration
}

// Count returns the number of requests in l.
func (l LatencyStats) Count() int64 {
	var n int64
	for _, c := range l.Counts {
		n += c
	}
	return n
}

// PathStats are the counters of one data path of one export.
type PathStats struct {
	// Requests counts the READs or WRITEs whose data took the path.
	Requests int64
	// Bytes are their payload bytes, failed requests excluded.
	Bytes int64
	// OnReader counts the Requests that the connection's reading
	// goroutine ran itself, without a goroutine of their own.
	OnReader int64
}

// Path is the way a READ's or a WRITE's data moves between the socket and
// the backend (see docs/architecture.md).
type Path uint8

// Data paths.
const (
	// PathNone: no payload (FLUSH, TRIM, WRITE_ZEROES, CACHE,
	// BLOCK_STATUS, and refused requests).
	PathNone Path = iota
	// PathReadLent: a READ sent from the backend's own memory
	// (backend.Viewer) or from buffers of its cache it lends until the
	// reply is written (backend.Lender), with writev(2), no buffer and
	// no copy.
	PathReadLent
	// PathReadSendfile: a READ sent from the export's file with
	// sendfile(2), no buffer and no copy in user space.
	PathReadSendfile
	// PathReadBuffered: a READ read into a buffer, then sent.
	PathReadBuffered
	// PathReadStreamed: a READ larger than one buffer, read and sent
	// chunk by chunk by the reply writer.
	PathReadStreamed
	// PathWriteBuffered: a WRITE payload read into a buffer, then written.
	PathWriteBuffered
	// PathWriteStreamed: a WRITE payload larger than one buffer, read
	// and written chunk by chunk on the reading goroutine.
	PathWriteStreamed
	// PathWriteFromReadBuffer: a WRITE payload that had arrived whole in
	// the connection's read buffer, written from there.
	PathWriteFromReadBuffer
	// PathWriteIntoExport: a WRITE payload read with readv(2) straight
	// into the backend's memory (backend.WriteViewer).
	PathWriteIntoExport
	// PathWriteSpliced: a WRITE payload spliced from the socket into the
	// export's file (backend.PipeWriter).
	PathWriteSpliced

	numPaths = iota
)

var pathNames = [numPaths]string{
	"none", "read-lent", "read-sendfile", "read-buffered", "read-streamed",
	"write-buffered", "write-streamed", "write-from-read-buffer", "write-into-export", "write-spliced",
}

// String returns the path's name, as a metrics label would use it:
// "read-lent", "write-spliced", ...
func (p Path) String() string {
	if int(p) < len(pathNames) {
		return pathNames[p]
	}
	return "Path(" + strconv.Itoa(int(p)) + ")"
}

// reads reports whether p is a READ's path.
func (p Path) reads() bool { return p >= PathReadLent && p <= PathReadStreamed }

// numCmds covers the commands the server knows (validate's table).
const numCmds = int(protocol.CmdBlockStatus) + 1

// errnos are the errnos a reply may carry; errnoSlot indexes them.
var errnos = [...]protocol.Errno{protocol.EPERM, protocol.EIO, protocol.ENOMEM, protocol.EINVAL,
	protocol.ENOSPC, protocol.EOVERFLOW, protocol.ENOTSUP, protocol.ESHUTDOWN}

func errnoSlot(e protocol.Errno) int {
	for i, x := range errnos {
		if x == e {
			return i
		}
	}
	return 1 // EIO: Errno maps anything else to it
}

// exportCounters are one connection's counters, or the totals of the
// connections of one export that have ended. A connection's are written
// mostly by its reader, which counts each request as it plans it, so
// connections never share a cache line on the hot path; errors and
// aborts, which are rare, are counted where they happen. Server.Stats
// sums them under Server.mu.
type exportCounters struct {
	name     string
	conns    atomic.Int64
	requests [numCmds]atomic.Int64
	unknown  atomic.Int64
	errors   [len(errnos)]atomic.Int64
	holes    atomic.Int64
	aborted  atomic.Int64
	paths    [numPaths]pathCounters
	// latency is written by whoever sends replies, not by the reader;
	// the padding keeps it off the reader's cache lines.
	_       [64]byte
	latency [numCmds]latencyCounters
}

type pathCounters struct{ requests, bytes, onReader atomic.Int64 }

type latencyCounters struct {
	counts [LatencyBuckets + 1]atomic.Int64
	sum    atomic.Int64 // nanoseconds
}

// epoch is where requestClock starts.
var epoch = time.Now()

// requestClock returns the monotonic time in nanoseconds since epoch:
// one vDSO clock read, where time.Now reads two clocks.
func requestClock() int64 { return int64(time.Since(epoch)) }

// answered records the latency of a request whose reply was written at
// now (requestClock), since its header was read at start: two
// uncontended atomic adds.
func (s *exportCounters) answered(typ protocol.Cmd, start, now int64) {
	if int(typ) >= numCmds {
		return
	}
	ns := max(now-start, 0)
	i := min(latencyBucket(ns), LatencyBuckets)
	l := &s.latency[typ]
	l.counts[i].Add(1)
	l.sum.Add(ns)
}

// latencyBucket returns the bucket of ns nanoseconds: the smallest i
// with ns <= LatencyBound(i), or LatencyBuckets or more past the last.
func latencyBucket(ns int64) int {
	const unit = int64(4 * time.Microsecond)
	if ns <= 0 {
		return 0
	}
	return bits.Len64(uint64((ns - 1) / unit))
}

// counted records a request the reader has planned: on the reader, or on
// a goroutine of its own. A READ or WRITE is counted on its path alone
// (snapshot adds the paths up), so that a request costs the reader three
// uncontended atomic adds at most.
func (s *exportCounters) counted(req protocol.ExtendedRequest, p Path, onReader bool) {
	if p == PathNone {
		if int(req.Type) >= numCmds {
			s.unknown.Add(1)
		} else {
			s.requests[req.Type].Add(1)
		}
		return
	}
	pc := &s.paths[p]
	pc.requests.Add(1)
	pc.bytes.Add(int64(req.Length))
	if onReader {
		pc.onReader.Add(1)
	}
}

// moved moves a counted request from one path, or runner, to another:
// a runtime outcome the plan allowed for (see plan.go).
func (s *exportCounters) moved(req protocol.ExtendedRequest, from, to Path, wasOnReader, onReader bool) {
	if from == to && wasOnReader == onReader {
		return
	}
	f, t := &s.paths[from], &s.paths[to]
	f.requests.Add(-1)
	f.bytes.Add(-int64(req.Length))
	t.requests.Add(1)
	t.bytes.Add(int64(req.Length))
	if wasOnReader {
		f.onReader.Add(-1)
	}
	if onReader {
		t.onReader.Add(1)
	}
}

// failed records an error reply; a failed request's bytes come off its
// path's.
func (s *exportCounters) failed(req protocol.ExtendedRequest, p Path, errno protocol.Errno) {
	s.errors[errnoSlot(errno)].Add(1)
	if p != PathNone {
		s.paths[p].bytes.Add(-int64(req.Length))
	}
}

// add adds o's counts into s.
func (s *exportCounters) add(o *exportCounters) {
	s.conns.Add(o.conns.Load())
	for i := range s.requests {
		s.requests[i].Add(o.requests[i].Load())
	}
	s.unknown.Add(o.unknown.Load())
	for i := range s.errors {
		s.errors[i].Add(o.errors[i].Load())
	}
	s.holes.Add(o.holes.Load())
	s.aborted.Add(o.aborted.Load())
	for i := range s.paths {
		s.paths[i].requests.Add(o.paths[i].requests.Load())
		s.paths[i].bytes.Add(o.paths[i].bytes.Load())
		s.paths[i].onReader.Add(o.paths[i].onReader.Load())
	}
	for i := range s.latency {
		l, ol := &s.latency[i], &o.latency[i]
		for b := range l.counts {
			l.counts[b].Add(ol.counts[b].Load())
		}
		l.sum.Add(ol.sum.Load())
	}
}

// snapshot returns s as ExportStats.
func (s *exportCounters) snapshot() ExportStats {
	es := ExportStats{
		Name:        s.name,
		Conns:       s.conns.Load(),
		Requests:    make(map[protocol.Cmd]int64, numCmds),
		UnknownCmds: s.unknown.Load(),
		Errors:      make(map[protocol.Errno]int64, len(errnos)),
		HoleBytes:   s.holes.Load(),
		Aborted:     s.aborted.Load(),
		Paths:       make(map[Path]PathStats, numPaths-1),
		Latency:     make(map[protocol.Cmd]LatencyStats, numCmds),
	}
	for i := range s.requests {
		if protocol.Cmd(i) != protocol.CmdDisc {
			es.Requests[protocol.Cmd(i)] = s.requests[i].Load()
			es.Latency[protocol.Cmd(i)] = s.latency[i].snapshot()
		}
	}
	for i, e := range errnos {
		es.Errors[e] = s.errors[i].Load()
	}
	for p := PathNone + 1; p < numPaths; p++ {
		pc := &s.paths[p]
		ps := PathStats{Requests: pc.requests.Load(), Bytes: pc.bytes.Load(), OnReader: pc.onReader.Load()}
		es.Paths[p] = ps
		if p.reads() {
			es.ReadBytes += ps.Bytes
			es.Requests[protocol.CmdRead] += ps.Requests
		} else {
			es.WriteBytes += ps.Bytes
			es.Requests[protocol.CmdWrite] += ps.Requests
		}
	}
	return es
}

func (l *latencyCounters) snapshot() LatencyStats {
	var ls LatencyStats
	for i := range l.counts {
		ls.Counts[i] = l.counts[i].Load()
	}
	ls.Sum = time.Duration(l.sum.Load())
	return ls
}

// Stats returns the server's counters. It is cheap enough to call at
// every scrape of a metrics endpoint: it takes the server's lock (never
// held on the request path) and reads atomic counters, while requests
// count themselves without a lock.
func (s *Server) Stats() Stats {
	s.init()
	totals := map[string]*exportCounters{}
	total := func(name string) *exportCounters {
		t := totals[name]
		if t == nil {
			t = &exportCounters{name: name}
			totals[name] = t
		}
		return t
	}
	s.mu.Lock()
	conns := len(s.conns)
	for name, ended := range s.ended {
		total(name).add(ended)
	}
	for c := range s.conns {
		if cs := c.stats.Load(); cs != nil {
			total(cs.name).add(cs)
		}
	}
	s.mu.Unlock()
	st := Stats{
		Conns: conns, Buffers: s.bufs.Stats(),
		Accepted:      s.connCounts.accepted.Load(),
		RefusedLimit:  s.connCounts.refusedLimit.Load(),
		RefusedAddr:   s.connCounts.refusedAddr.Load(),
		RefusedExport: s.connCounts.refusedExport.Load(),
	}
	for _, t := range totals {
		st.Exports = append(st.Exports, t.snapshot())
	}
	slices.SortFunc(st.Exports, func(a, b ExportStats) int { return strings.Compare(a.Name, b.Name) })
	return st
}

// Export returns the counters of the export named name, and false if no
// connection has selected it yet.
func (st Stats) Export(name string) (ExportStats, bool) {
	for _, e := range st.Exports {
		if e.Name == name {
			return e, true
		}
	}
	return ExportStats{}, false
}

// endStats keeps the counters of a connection that is ending in its
// export's totals. The caller holds s.mu, so Stats sees the connection's
// counts either in the connection or in the totals, never in both.
func (s *Server) endStats(c *conn) {
	cs := c.stats.Load()
	if cs == nil {
		return
	}
	if s.ended == nil {
		s.ended = map[string]*exportCounters{}
	}
	t := s.ended[cs.name]
	if t == nil {
		t = &exportCounters{name: cs.name}
		s.ended[cs.name] = t
	}
	t.add(cs)
}
