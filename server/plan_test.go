package server

import (
	"fmt"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// facts answers the planner's questions from its fields and records
// which were asked.
type facts struct {
	tries, isCached, known, all bool
	asked                       []string
}

func (f *facts) mayTryCache() bool           { f.asked = append(f.asked, "try"); return f.tries }
func (f *facts) triedCache(bool)             { f.asked = append(f.asked, "tried") }
func (f *facts) cached(off, n int64) bool    { f.asked = append(f.asked, "cached"); return f.isCached }
func (f *facts) knownData(int64, int64) bool { f.asked = append(f.asked, "known"); return f.known }
func (f *facts) allData(int64, int64) bool   { f.asked = append(f.asked, "lookup"); return f.all }

// capsOf are the capabilities of the kinds of export the planner meets.
var capsOf = map[string]caps{
	// backend.Memory: never blocks, lends its pages both ways.
	"memory": {nonBlocking: true, viewer: backend.NewMemory(1), writeViewer: backend.NewMemory(1), extenter: backend.NewMemory(1)},
	// A memory image written back to a file on FLUSH.
	"memory-syncwaits": {nonBlocking: true, syncWaits: true, viewer: backend.NewMemory(1), writeViewer: backend.NewMemory(1)},
	// A file in /dev/shm.
	"shm-file": {nonBlocking: true, file: aFile, pipeWriter: aFile, extenter: backend.NewMemory(1), dataKnower: aFile},
	// A file on a disk.
	"disk-file": {file: aFile, pipeWriter: aFile, cachedReader: aFile, extenter: backend.NewMemory(1), dataKnower: aFile},
	// A backend written for go-nbd: no capability at all.
	"plain": {},
	// A decorator over memory that forwards only NonBlocker.
	"nonblocking": {nonBlocking: true},
}

// aFile stands in for a backend.File in caps; the planner never calls it.
var aFile = new(backend.File)

// conns are the kinds of connection.
var conns = map[string]planInput{
	"socket":    {kernelCopies: true},
	"socket-sr": {kernelCopies: true, structured: true},
	"tls-sr":    {structured: true},
	"pipe":      {},
}

func req(typ protocol.Cmd, n uint64, flags ...protocol.CmdFlag) protocol.ExtendedRequest {
	return protocol.ExtendedRequest{Type: typ, Length: n, Flags: orFlags(flags)}
}

// TestPlan walks capabilities × connection × request and checks the plan
// of each case the server meets: where it runs, how its data moves,
// whether it asks for holes.
func TestPlan(t *testing.T) {
	read, write := protocol.CmdRead, protocol.CmdWrite
	fua, df := protocol.CmdFlagFUA, protocol.CmdFlagDF
	on := func(r runOn, d Path) plan { return plan{run: r, data: d} }
	holey := func(p plan) plan { p.holes = askHoles; return p }
	tests := []struct {
		exp, conn string
		req       protocol.ExtendedRequest
		chunk     int  // the strategy's largest buffer, 0: any
		buffered  int  // payload bytes in the read buffer
		noRoom    bool // the budget is full
		noSplice  bool
		f         facts
		want      plan
	}{
		// Memory: everything on the reader, nothing copied by Go.
		{exp: "memory", conn: "socket", req: req(read, 4096), want: on(onReader, PathReadLent)},
		{exp: "memory", conn: "socket", req: req(read, 32<<20), want: on(onReader, PathReadLent)},
		{exp: "memory", conn: "socket-sr", req: req(read, 1<<20), want: holey(on(onReader, PathReadLent))},
		{exp: "memory", conn: "socket-sr", req: req(read, 1<<20, df), want: on(onReader, PathReadLent)},
		{exp: "memory", conn: "socket-sr", req: req(read, 4096), want: on(onReader, PathReadLent)},
		{exp: "memory", conn: "socket", req: req(write, 4096), buffered: 4096, want: on(onReader, PathWriteFromReadBuffer)},
		{exp: "memory", conn: "socket", req: req(write, 4096), buffered: 100, want: on(onReader, PathWriteIntoExport)},
		{exp: "memory", conn: "socket", req: req(write, 32<<20, fua), want: on(onReader, PathWriteIntoExport)},
		{exp: "memory", conn: "socket", req: req(protocol.CmdFlush, 0), want: on(onReader, PathNone)},
		{exp: "memory", conn: "socket", req: req(protocol.CmdTrim, 1<<30), want: on(onGoroutine, PathNone)},
		// Over TLS Go copies, so nothing is lent: buffers, inline while small.
		{exp: "memory", conn: "tls-sr", req: req(read, 4096), want: on(onReader, PathReadBuffered)},
		{exp: "memory", conn: "tls-sr", req: req(read, 1<<20), want: holey(on(onGoroutine, PathReadBuffered))},
		{exp: "memory", conn: "tls-sr", req: req(read, 1<<20), chunk: 256 << 10, want: on(onGoroutine, PathReadStreamed)},
		{exp: "memory", conn: "tls-sr", req: req(write, 4096), buffered: 10, want: on(onReader, PathWriteBuffered)},
		{exp: "memory", conn: "tls-sr", req: req(write, 1<<20), want: on(onGoroutine, PathWriteBuffered)},
		{exp: "memory", conn: "tls-sr", req: req(write, 1<<20), chunk: 256 << 10, want: on(onReader, PathWriteStreamed)},
		{exp: "memory", conn: "pipe", req: req(write, 4096), noRoom: true, want: on(onReader, PathWriteStreamed)},
		{exp: "memory", conn: "pipe", req: req(read, 4096), noRoom: true, want: on(onReader, PathReadStreamed)},
		// A Sync that waits never runs on the reader.
		{exp: "memory-syncwaits", conn: "socket", req: req(protocol.CmdFlush, 0), want: on(onGoroutine, PathNone)},
		{exp: "memory-syncwaits", conn: "socket", req: req(write, 4096, fua), buffered: 4096, want: on(onGoroutine, PathWriteBuffered)},
		{exp: "memory-syncwaits", conn: "socket", req: req(write, 1<<20, fua), chunk: 256 << 10, want: on(syncOnGoroutine, PathWriteStreamed)},
		{exp: "memory-syncwaits", conn: "socket", req: req(write, 4096), buffered: 4096, want: on(onReader, PathWriteFromReadBuffer)},
		// A file in memory: sendfile and splice on the reader.
		{exp: "shm-file", conn: "socket", req: req(read, 4096), f: facts{isCached: true}, want: on(onReader, PathReadBuffered)},
		{exp: "shm-file", conn: "socket", req: req(read, 1<<20), f: facts{isCached: true}, want: on(onReader, PathReadSendfile)},
		{exp: "shm-file", conn: "socket-sr", req: req(read, 1<<20), f: facts{isCached: true, all: true}, want: on(onReader, PathReadSendfile)},
		{exp: "shm-file", conn: "socket-sr", req: req(read, 1<<20), f: facts{isCached: true}, want: holey(on(onReader, PathReadBuffered))},
		{exp: "shm-file", conn: "socket", req: req(write, 256<<10), buffered: 1000, want: on(onReader, PathWriteSpliced)},
		{exp: "shm-file", conn: "socket", req: req(write, 256<<10), buffered: 1000, noSplice: true, want: on(onGoroutine, PathWriteBuffered)},
		{exp: "shm-file", conn: "socket", req: req(write, 8192), buffered: 1000, want: on(onReader, PathWriteBuffered)},
		{exp: "shm-file", conn: "tls-sr", req: req(read, 1<<20), f: facts{isCached: true}, want: holey(on(onGoroutine, PathReadBuffered))},
		// A file on a disk: the reader answers what the page cache holds.
		{exp: "disk-file", conn: "socket", req: req(read, 1<<20), f: facts{tries: true, isCached: true}, want: on(onReader, PathReadSendfile)},
		{exp: "disk-file", conn: "socket", req: req(read, 1<<20), f: facts{tries: true}, want: on(onGoroutine, PathReadBuffered)},
		{exp: "disk-file", conn: "socket", req: req(read, 1<<20), chunk: 256 << 10, f: facts{tries: true}, want: on(onGoroutine, PathReadStreamed)},
		{exp: "disk-file", conn: "socket-sr", req: req(read, 1<<20), f: facts{tries: true, isCached: true, known: true}, want: on(onReader, PathReadSendfile)},
		{exp: "disk-file", conn: "socket-sr", req: req(read, 1<<20), f: facts{tries: true, isCached: true}, want: holey(on(onGoroutine, PathReadSendfile))},
		{exp: "disk-file", conn: "socket", req: req(read, 4096), f: facts{tries: true}, want: on(tryOnReader, PathReadBuffered)},
		{exp: "disk-file", conn: "tls-sr", req: req(read, 60<<10), f: facts{tries: true}, want: on(tryOnReader, PathReadBuffered)},
		{exp: "disk-file", conn: "tls-sr", req: req(read, 100<<10), f: facts{tries: true}, want: holey(on(onGoroutine, PathReadBuffered))},
		{exp: "disk-file", conn: "socket", req: req(read, 4096), f: facts{}, want: on(onGoroutine, PathReadBuffered)},
		{exp: "disk-file", conn: "socket", req: req(read, 4096), noRoom: true, f: facts{tries: true}, want: on(onGoroutine, PathReadBuffered)},
		{exp: "disk-file", conn: "socket", req: req(read, 1<<20), noRoom: true, f: facts{tries: true}, want: on(onGoroutine, PathReadStreamed)},
		{exp: "disk-file", conn: "socket", req: req(write, 256<<10), buffered: 256 << 10, want: on(onGoroutine, PathWriteBuffered)},
		{exp: "disk-file", conn: "socket", req: req(write, 1<<20), chunk: 256 << 10, want: on(onReader, PathWriteSpliced)},
		{exp: "disk-file", conn: "socket", req: req(write, 1<<20, fua), chunk: 256 << 10, want: on(syncOnGoroutine, PathWriteSpliced)},
		{exp: "disk-file", conn: "socket", req: req(write, 1<<20), noRoom: true, want: on(onReader, PathWriteSpliced)},
		{exp: "disk-file", conn: "socket", req: req(protocol.CmdFlush, 0), want: on(onGoroutine, PathNone)},
		// go-nbd's backends: buffers, and goroutines of their own.
		{exp: "plain", conn: "socket", req: req(read, 4096), want: on(onGoroutine, PathReadBuffered)},
		{exp: "plain", conn: "socket", req: req(write, 4096), buffered: 4096, want: on(onGoroutine, PathWriteBuffered)},
		{exp: "plain", conn: "socket", req: req(write, 1<<20), chunk: 256 << 10, want: on(onReader, PathWriteStreamed)},
		{exp: "plain", conn: "socket", req: req(write, 1<<20, fua), chunk: 256 << 10, want: on(syncOnGoroutine, PathWriteStreamed)},
		{exp: "plain", conn: "socket", req: req(read, 4096), noRoom: true, want: on(onGoroutine, PathReadBuffered)},
		{exp: "plain", conn: "socket", req: req(read, 100<<10), noRoom: true, want: on(onGoroutine, PathReadStreamed)},
		{exp: "plain", conn: "socket", req: req(protocol.CmdWriteZeroes, 4096), want: on(onGoroutine, PathNone)},
		{exp: "nonblocking", conn: "socket", req: req(read, 4096), want: on(onReader, PathReadBuffered)},
		{exp: "nonblocking", conn: "socket", req: req(read, 1<<20), want: on(onGoroutine, PathReadBuffered)},
		{exp: "nonblocking", conn: "socket", req: req(write, 4096), buffered: 4096, want: on(onReader, PathWriteFromReadBuffer)},
		{exp: "nonblocking", conn: "socket", req: req(write, 4096), want: on(onReader, PathWriteBuffered)},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s/%s/%v/%d/%v", tt.exp, tt.conn, tt.req.Type, tt.req.Length, tt.req.Flags)
		in := conns[tt.conn]
		cp := capsOf[tt.exp]
		in.req, in.exp, in.facts = tt.req, &cp, &tt.f
		in.chunk, in.buffered, in.noRoom, in.noSplice = tt.chunk, tt.buffered, tt.noRoom, tt.noSplice
		got := planRequest(&in)
		require.Equal(t, tt.want, got, "%s (chunk %d, buffered %d, noRoom %v, facts %+v): asked %v",
			name, tt.chunk, tt.buffered, tt.noRoom, tt.f, tt.f.asked)
	}
}

// TestPlanRules checks, over every combination of capabilities,
// connection, request and facts, the rules every plan keeps whatever the
// thresholds.
func TestPlanRules(t *testing.T) {
	var reqs []protocol.ExtendedRequest
	for _, n := range []uint64{1, 4096, 64 << 10, 128<<10 + 1, 1 << 20, 32 << 20, 5 << 30} {
		for _, flags := range []protocol.CmdFlag{0, protocol.CmdFlagFUA, protocol.CmdFlagDF} {
			reqs = append(reqs, req(protocol.CmdRead, n, flags), req(protocol.CmdWrite, n, flags&protocol.CmdFlagFUA))
		}
		reqs = append(reqs, req(protocol.CmdTrim, n), req(protocol.CmdWriteZeroes, n, protocol.CmdFlagFUA), req(protocol.CmdCache, n))
	}
	reqs = append(reqs, req(protocol.CmdFlush, 0), req(protocol.CmdBlockStatus, 1<<20))
	cases := 0
	for expName, cp := range capsOf {
		for connName, conn := range conns {
			for _, r := range reqs {
				for _, chunk := range []int{0, 4096, 256 << 10} {
					for _, buffered := range []int{0, 4096, 64 << 10} {
						for bits := range 32 {
							f := facts{tries: bits&1 != 0, isCached: bits&2 != 0, known: bits&4 != 0, all: bits&8 != 0}
							in := conn
							in.req, in.exp, in.facts, in.chunk, in.buffered, in.noRoom = r, &cp, &f, chunk, buffered, bits&16 != 0
							p := planRequest(&in)
							checkPlanRules(t, fmt.Sprintf("%s/%s/%v %d %v chunk %d buffered %d facts %+v noRoom %v",
								expName, connName, r.Type, r.Length, r.Flags, chunk, buffered, f, in.noRoom), &in, &f, p)
							cases++
						}
					}
				}
			}
		}
	}
	t.Logf("%d cases", cases)
}

func checkPlanRules(t *testing.T, name string, in *planInput, f *facts, p plan) {
	t.Helper()
	c, r, n := in.exp, in.req, int(in.req.Length)
	fail := func(rule string) { t.Helper(); t.Fatalf("%s: plan %+v breaks: %s", name, p, rule) }
	switch {
	case r.Type == protocol.CmdRead && !p.data.reads():
		fail("a READ takes a read path")
	case r.Type == protocol.CmdWrite && (p.data == PathNone || p.data.reads()):
		fail("a WRITE takes a write path")
	case r.Type != protocol.CmdRead && r.Type != protocol.CmdWrite && p.data != PathNone:
		fail("other commands move no data")
	}
	kernel := p.data == PathReadLent || p.data == PathReadSendfile || p.data == PathWriteIntoExport || p.data == PathWriteSpliced
	switch {
	case kernel && !in.kernelCopies:
		fail("only the kernel touches lent memory and files: a plain socket")
	case p.data == PathReadLent && c.viewer == nil, p.data == PathWriteIntoExport && c.writeViewer == nil:
		fail("lent memory needs a Viewer or WriteViewer")
	case p.data == PathReadSendfile && (c.file == nil || n < sendfileMin || !f.isCached):
		fail("sendfile needs a file, a large READ and cached data")
	case p.data == PathWriteSpliced && (c.pipeWriter == nil || n < spliceMin || in.noSplice || n <= in.buffered):
		fail("splice needs a PipeWriter and a large payload still in the socket")
	case p.data == PathWriteFromReadBuffer && n > in.buffered:
		fail("a payload written from the read buffer is all there")
	case (p.data == PathReadBuffered || p.data == PathWriteBuffered) && in.chunk > 0 && n > in.chunk:
		fail("a request larger than the strategy's buffers streams")
	case in.noRoom && (p.data == PathWriteBuffered || p.data == PathReadBuffered && (p.run != onGoroutine || n > spareSize)):
		fail("without a buffer, only a READ on its own goroutine that fits the READ spare is buffered")
	}
	blocks := !c.nonBlocking
	switch {
	case p.run == onReader && blocks && r.Type != protocol.CmdWrite && p.data != PathReadSendfile:
		fail("the reader runs nothing on a backend that may block, but cached file data")
	case p.run == onReader && blocks && r.Type == protocol.CmdWrite && p.data != PathWriteStreamed && p.data != PathWriteSpliced:
		fail("the reader writes to a backend that may block only what streams")
	case p.run == onReader && r.Type != protocol.CmdRead && syncs(r) && (blocks || c.syncWaits) && p.data != PathWriteFromReadBuffer:
		fail("a sync that may wait never runs on the reader")
	case p.run == tryOnReader && (c.cachedReader == nil || n > inlineMax):
		fail("the reader tries only small READs of a CachedReader")
	case p.run == syncOnGoroutine && (r.Type != protocol.CmdWrite || r.Flags&protocol.CmdFlagFUA == 0):
		fail("only a FUA WRITE hands its sync to a goroutine")
	case p.run == onReader && !blocks && n > inlineMax && p.data == PathReadBuffered && !in.kernelCopies:
		fail("a large copy on the reader")
	}
	if p.holes == askHoles && (!in.structured || c.extenter == nil || n < sparseMin || r.Flags&protocol.CmdFlagDF != 0 ||
		p.data != PathReadLent && p.data != PathReadBuffered && !(p.data == PathReadSendfile && p.run == onGoroutine)) {
		fail("holes only in a large structured READ without DF, lent, buffered, or looked up on a goroutine before sendfile")
	}
	if blocks && (p.run == onReader || p.run == tryOnReader) {
		for _, q := range f.asked {
			if q == "lookup" {
				fail("no hole lookup for a backend that may block: it may wait on the inode lock")
			}
		}
	}
}

// TestPlanEdges checks the three ways execution moves a plan on.
func TestPlanEdges(t *testing.T) {
	p := plan{run: tryOnReader, data: PathReadBuffered}
	require.Equal(t, plan{run: onGoroutine, data: PathReadBuffered}, p.afterMiss(), "a miss runs on a goroutine")

	sf := plan{run: onGoroutine, data: PathReadSendfile, holes: askHoles}
	require.Equal(t, plan{run: onGoroutine, data: PathReadSendfile}, sf.lookedUp(false, 1<<20, 0), "no holes: sendfile")
	require.Equal(t, plan{run: onGoroutine, data: PathReadBuffered, holes: askHoles}, sf.lookedUp(true, 1<<20, 1<<20), "holes: into the buffer")
	require.Equal(t, plan{run: onGoroutine, data: PathReadStreamed}, sf.lookedUp(true, 1<<20, 256<<10), "holes, a smaller buffer: streamed")
	require.Equal(t, plan{run: onGoroutine, data: PathReadStreamed}, sf.lookedUp(true, 1<<20, 0), "holes, no buffer: streamed through the spare")
	require.Equal(t, plan{run: onGoroutine, data: PathReadBuffered, holes: askHoles}, sf.lookedUp(true, spareSize, 0), "holes, no buffer: in the spare if it fits")

	sp := plan{run: syncOnGoroutine, data: PathWriteSpliced}
	require.Equal(t, plan{run: syncOnGoroutine, data: PathWriteStreamed}, sp.spliceFailed(), "copied instead")
}
