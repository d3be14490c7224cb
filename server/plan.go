package server

import (
	"cmp"

	"github.com/nbdd/nbdd/protocol"
)

// The planner decides, once per request and on the reader, where the
// request runs and how its data moves (docs/architecture.md has the table
// of paths). It looks at the export's capabilities (caps), the
// connection (a plain socket or not, structured replies, splicing still
// possible), the request, and a few facts about the data that change as
// the export is used (planFacts: is the range in the page cache, is it
// known to hold no holes). Nothing else decides either: the code that
// runs a request follows its plan, and the reply writer sends it as its
// plan says.
//
// When the strategy has no buffer for a request (the budget is full), the
// reader plans it again with that fact (planInput.noRoom). Three outcomes
// only execution can find move a plan on, each along one edge written
// here and nowhere else: the reader's try of a cached READ missed
// (afterMiss), the hole lookup of a cached file READ (lookedUp), and a
// splice failed part way (spliceFailed).

// runOn is where a request runs.
type runOn uint8

const (
	// onReader: the reader runs it before reading the next request, and
	// holds its reply to send with the others of its burst (held.go).
	onReader runOn = iota
	// tryOnReader: the reader tries it without waiting for a device
	// (backend.CachedReader); a miss runs it on a goroutine of its own.
	tryOnReader
	// onGoroutine: a goroutine of its own, within Server.MaxBackendCalls,
	// which sends the reply itself when the socket is free.
	onGoroutine
	// syncOnGoroutine: the reader moves a WRITE's payload, then a
	// goroutine of its own makes it durable (FUA) and sends the reply, so
	// that a sync that waits never holds up the reader.
	syncOnGoroutine
)

var runOnNames = [...]string{"reader", "try-on-reader", "goroutine", "sync-on-goroutine"}

func (r runOn) String() string { return runOnNames[r] }

// holeMode says whether a READ asks the backend where its holes are.
type holeMode uint8

const (
	// noHoles: the data goes out as one piece (simple replies, DF, small
	// READs, backends that cannot tell).
	noHoles holeMode = iota
	// askHoles: a structured READ large enough to be worth an extent
	// lookup; holes go out as OFFSET_HOLE chunks (sparse.go).
	askHoles
)

// plan is how one request runs. It travels with the request's op.
type plan struct {
	run   runOn
	data  Path
	holes holeMode
}

// sendsAlone reports whether the reply's data follows its header only
// as it is read or sent (replytail.go): the writer needs the socket to
// itself, and may wait for it.
func (p plan) sendsAlone() bool {
	return p.data == PathReadStreamed || p.data == PathReadSendfile
}

// byReader reports whether the reader runs the request itself.
func (p plan) byReader() bool { return p.run == onReader || p.run == tryOnReader }

// planFacts answers the planner's questions about a request's data that
// its capabilities cannot: the reader's connection asks the export.
type planFacts interface {
	// mayTryCache reports whether the reader may ask the page cache about
	// a READ of a backend that may block; it paces the attempts while
	// they miss (cacheTries).
	mayTryCache() bool
	// triedCache records the answer to such a question.
	triedCache(hit bool)
	// cached reports whether the range is in the page cache (cachestat:
	// a system call that never waits on the device).
	cached(off, n int64) bool
	// knownData reports, without a system call, that the range holds no
	// holes (backend.DataKnower).
	knownData(off, n int64) bool
	// allData reports whether an extent lookup finds the range all data.
	// The lookup may wait on the inode lock behind a write.
	allData(off, n int64) bool
}

// planInput is everything the planner looks at.
type planInput struct {
	req protocol.ExtendedRequest
	exp *caps
	// kernelCopies: a plain socket, which the kernel reads and writes
	// (writev, readv, sendfile, splice); not TLS, not net.Pipe.
	kernelCopies bool
	structured   bool
	noSplice     bool // splicing failed on this connection before
	// buffered is how much of the request's payload is in the read buffer.
	buffered int
	// chunk is the largest buffer the strategy hands out; 0: any size.
	chunk int
	// noRoom: the strategy had no buffer for the request (the budget is
	// full), so the plan is made again without one.
	noRoom bool
	facts  planFacts
}

// Thresholds of the planner; docs/performance.md has the measurements.
const (
	// inlineMax is the largest request the reader runs itself on a
	// backend that never blocks. Above it, the copy costs more than the
	// hand-off to a goroutine of its own.
	inlineMax = 128 << 10
	// sendfileMin is the smallest READ sent with sendfile(2). Below it, a
	// pread into a pooled buffer and a writev shared with the replies
	// around it cost less than the two system calls of a header and a
	// sendfile.
	sendfileMin = 64 << 10
	// sparseMin is the smallest READ worth asking the backend about holes:
	// below it an extent lookup costs more than the zeroes it saves.
	sparseMin = 64 << 10
	// spliceMin is the smallest payload spliced. Smaller ones usually
	// arrive whole in the read buffer, and two splice calls cost more than
	// copying them.
	spliceMin = 64 << 10
)

// planRequest is the planner: see the top of this file.
func planRequest(in *planInput) plan {
	switch in.req.Type {
	case protocol.CmdRead:
		return planRead(in)
	case protocol.CmdWrite:
		return planWrite(in)
	}
	return plan{run: in.runner(false)}
}

// readerMayRun reports whether the reader may run the request itself:
// the backend never blocks, and the request does not make it sync when
// its Sync may wait (backend.SyncWaiter).
func (in *planInput) readerMayRun() bool {
	return in.exp.nonBlocking && !(in.exp.syncWaits && syncs(in.req))
}

// runner is where a request that needs no more than a buffer runs: on
// the reader when it may and the request is small, or costs no copy
// (noCopy); otherwise on a goroutine of its own, so a slow request never
// stalls the ones behind it.
func (in *planInput) runner(noCopy bool) runOn {
	if in.readerMayRun() && (in.req.Length <= inlineMax || noCopy) {
		return onReader
	}
	return onGoroutine
}

// streams reports whether the request's data moves in chunks: larger
// than the strategy's buffers, or, for a WRITE, no buffer to be had (the
// reader's spare takes it).
func (in *planInput) streams() bool {
	return in.chunk > 0 && int(in.req.Length) > in.chunk || in.noRoom && in.req.Type == protocol.CmdWrite
}

// syncs reports whether req makes the backend sync: FLUSH, or FUA.
func syncs(req protocol.ExtendedRequest) bool {
	return req.Type == protocol.CmdFlush || req.Flags&protocol.CmdFlagFUA != 0
}

// planRead plans a READ.
func planRead(in *planInput) plan {
	p := plan{holes: in.holeMode()}
	switch {
	case in.exp.viewer != nil && in.kernelCopies:
		p.data = PathReadLent
	case in.exp.nonBlocking && in.sendsFile(true):
		p.data, p.holes = PathReadSendfile, noHoles
	case !in.exp.nonBlocking && in.exp.mayCache() && !in.noRoom && in.facts.mayTryCache():
		return in.planCachedRead(p)
	case in.lends():
		p.data = PathReadLent
	case in.streams():
		p.data = PathReadStreamed
	default:
		p.data = PathReadBuffered
	}
	if p.data != PathReadLent && p.data != PathReadBuffered {
		p.holes = noHoles // holes go out only from lent pages or a buffer
	}
	// A READ whose data is lent or sent from the file costs no copy on
	// the reader, whatever its size.
	p.run = in.runner(in.kernelCopies && (in.exp.viewer != nil || in.exp.lender != nil || in.exp.file != nil))
	if in.noRoom && p.data == PathReadBuffered && (p.run == onReader || in.req.Length > spareSize) {
		// Through a spare buffer (spare.go): the writer's, or the
		// connection's READ spare, whose first chunk the goroutine reads.
		p.data, p.holes = PathReadStreamed, noHoles
	}
	return p
}

// planCachedRead plans a READ of a backend that may block whose data
// the page cache may hold: the reader answers it itself when it is
// cached, as it would for a backend that never blocks, since it then
// waits on no device; otherwise it runs on a goroutine of its own.
//
//   - A READ of sendfileMin bytes or more whose range is cached goes out
//     with sendfile(2); under structured replies from the reader only if
//     its range is known to hold no holes without asking the filesystem
//     (knownData), whose SEEK_DATA may wait on the inode lock behind a
//     write, and otherwise from a goroutine of its own after the lookup.
//   - A smaller one the reader tries with backend.CachedReader, which
//     gives up rather than wait for the device.
//
// Neither is tried when the answer could not be used (a hole lookup
// needed, a strategy with smaller buffers), and only what was asked
// counts for the pacing of tries.
func (in *planInput) planCachedRead(p plan) plan {
	n := int64(in.req.Length)
	known := p.holes == noHoles || in.facts.knownData(int64(in.req.Offset), n)
	switch {
	case in.exp.file != nil && in.kernelCopies && n >= sendfileMin:
		hit := in.facts.cached(int64(in.req.Offset), n)
		in.facts.triedCache(hit)
		switch {
		case hit && known:
			return plan{run: onReader, data: PathReadSendfile}
		case hit:
			// The holes are looked up on a goroutine of its own, which
			// sends the data from the file if there are none (lookedUp).
			return plan{run: onGoroutine, data: PathReadSendfile, holes: askHoles}
		}
	case in.exp.cachedReader != nil && n <= inlineMax && p.holes == noHoles && !in.streams():
		return plan{run: tryOnReader, data: PathReadBuffered}
	}
	p.run, p.data = onGoroutine, PathReadBuffered
	switch {
	case in.lends():
		p.data = PathReadLent
	case in.streams():
		p.data, p.holes = PathReadStreamed, noHoles
	}
	return p
}

// lends reports whether a READ of a backend that may block is sent from
// buffers of its cache it lends (backend.Lender), with writev(2) on a
// plain socket: no buffer of the strategy and no copy. A READ the reader
// answers from the cache itself (planCachedRead) is not lent: a goroutine
// of its own would cost it more than its copy.
func (in *planInput) lends() bool {
	return in.exp.lender != nil && in.kernelCopies
}

// sendsFile reports whether the READ may go from the export's file
// straight to the socket with sendfile(2): no buffer, and no copy in user
// space, the file counterpart of a Viewer's lent pages. It needs a plain
// socket, a READ of at least sendfileMin, a range wholly in the page cache
// (always so for a file in memory), so that sendfile waits on no disk
// while it holds the socket and meets no bad sector after the header is
// out, and, when the reply may have holes, none in the range: holes go
// out as OFFSET_HOLE chunks from a buffer. lookup allows an extent lookup
// to find out; without it the range must be known to be data. A sendfile
// that fails after the header is out (the file shrank under the export,
// or pages evicted since the check met a disk error) can only end in a
// disconnect, as a streamed READ does.
func (in *planInput) sendsFile(lookup bool) bool {
	off, n := int64(in.req.Offset), int64(in.req.Length)
	if in.exp.file == nil || !in.kernelCopies || n < sendfileMin || !in.facts.cached(off, n) {
		return false
	}
	if in.holeMode() == noHoles {
		return true
	}
	if !lookup {
		return in.facts.knownData(off, n)
	}
	return in.facts.allData(off, n)
}

// holeMode says whether the READ's reply may be sent as data and hole
// chunks: a structured READ, without DF, large enough to be worth asking
// the backend for extents.
func (in *planInput) holeMode() holeMode {
	if in.structured && in.exp.extenter != nil && in.req.Length >= sparseMin && in.req.Flags&protocol.CmdFlagDF == 0 {
		return askHoles
	}
	return noHoles
}

// planWrite plans a WRITE. A backend that never blocks takes the payload
// on the reader without a buffer where it can: from the read buffer, with
// readv straight into its memory, or spliced into its file (payload.go,
// splice.go). Otherwise the payload goes into a buffer and the WRITE runs
// like any other request, or, larger than a buffer, streams into the
// backend on the reader.
func planWrite(in *planInput) plan {
	n := int(in.req.Length)
	if in.readerMayRun() {
		switch {
		case n <= in.buffered:
			return plan{run: onReader, data: PathWriteFromReadBuffer}
		case in.exp.writeViewer != nil && in.kernelCopies:
			return plan{run: onReader, data: PathWriteIntoExport}
		case in.splices():
			return plan{run: onReader, data: PathWriteSpliced}
		}
	}
	if !in.streams() {
		return plan{run: in.runner(false), data: PathWriteBuffered}
	}
	p := plan{run: onReader, data: PathWriteStreamed}
	if in.splices() {
		p.data = PathWriteSpliced
	}
	if in.syncWaitsAfter() {
		p.run = syncOnGoroutine
	}
	return p
}

// splices reports whether a WRITE's payload may be taken with splice(2):
// a file backend that can (backend.PipeWriter), a plain socket, a
// payload of spliceMin or more not already in the read buffer.
func (in *planInput) splices() bool {
	return in.exp.pipeWriter != nil && in.kernelCopies && !in.noSplice &&
		in.req.Length >= spliceMin && int(in.req.Length) > in.buffered
}

// syncWaitsAfter reports whether a WRITE the reader moves has a FUA sync
// that may wait: the backend may block, or its Sync may.
func (in *planInput) syncWaitsAfter() bool {
	return in.req.Flags&protocol.CmdFlagFUA != 0 && !(in.exp.nonBlocking && !in.exp.syncWaits)
}

// afterMiss is a tried READ's plan once the page cache missed: a
// goroutine of its own reads it.
func (p plan) afterMiss() plan {
	p.run = onGoroutine
	return p
}

// lookedUp is the plan of a READ planned PathReadSendfile with askHoles
// once its goroutine looked the holes up. With none, it is sent from the
// file. With holes, it is read into a buffer of buf bytes (the READ
// spare's if 0), so the holes go out as hole chunks, or, larger than
// that, streamed.
func (p plan) lookedUp(holes bool, n, buf int) plan {
	p.holes = noHoles
	switch {
	case !holes:
	case n > cmp.Or(buf, spareSize):
		p.data = PathReadStreamed
	default:
		p.data, p.holes = PathReadBuffered, askHoles
	}
	return p
}

// spliceFailed is a spliced WRITE's plan once splicing failed: the rest
// of its payload is copied through the reader's spare.
func (p plan) spliceFailed() plan {
	p.data = PathWriteStreamed
	return p
}

// cacheTries spares the reader its failed attempts when the data is not
// in the page cache (an image larger than memory, read at random): after
// missRun misses in a row it tries one READ in missRun, until one hits.
// A miss costs a system call the READ's own goroutine then repeats.
type cacheTries struct{ misses int }

const missRun = 16

func (t *cacheTries) try() bool {
	if t.misses < missRun {
		return true
	}
	t.misses++
	return t.misses%missRun == 0
}

func (t *cacheTries) record(hit bool) {
	if hit {
		t.misses = 0
	} else if t.misses < missRun {
		t.misses++
	}
}
