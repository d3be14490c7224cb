package server

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	gonbd "github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/stretchr/testify/require"
)

// memExport returns a server with one memory export of size bytes named
// "mem".
func memExport(size int64) *Server {
	return &Server{Exports: []Export{{Name: "mem", Backend: backend.NewMemory(size)}}}
}

// Sizes that cross the 4 KiB stream chunk and the 64 KiB memory chunk.
var roundTripSizes = []int{1, 511, 4096, 4097, 65537, 200_000}

func TestReadWriteRoundTrip(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		for _, sr := range []bool{false, true} {
			st := newServerTester(t, strategy, memExport(1<<20))
			if sr {
				st.handshakeSR("mem")
			} else {
				st.handshake("mem")
			}
			off := uint64(3)
			for i, n := range roundTripSizes {
				data := pattern(n, byte(i))
				cookie := uint64(100 + i)
				st.write(cookie, off, data)
				st.wantReply(cookie, protocol.EOK)
				st.read(cookie, off, uint32(n))
				if sr {
					st.wantStructuredRead(cookie, off, data)
				} else {
					st.wantRead(cookie, data)
				}
				off += uint64(n) + 13
			}
			st.disc()
			st.wantClosed()
			st.wantServeResult(func(err error) bool { return err == nil }, "nil after NBD_CMD_DISC")
		}
	})
}

// TestSmallBudget: with a budget and a maximum request smaller than the
// requests, every strategy moves them through the budget in pieces.
func TestSmallBudget(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := memExport(1 << 20)
		srv.MaxRequestSize = 256 << 10
		srv.MaxInflightBytes = 16 << 10
		st := newServerTester(t, strategy, srv, bufferConfig{budget: 16 << 10, streamChunk: 8 << 10})
		st.handshake("mem")
		for i, n := range []int{100, 16 << 10, 100_000, 256 << 10} {
			data := pattern(n, byte(i+1))
			st.write(1, 777, data, protocol.CmdFlagFUA)
			st.wantReply(1, protocol.EOK)
			st.read(2, 777, uint32(n))
			st.wantRead(2, data)
		}
		// Pipelined: several large requests at once must not deadlock on the
		// budget. Writes first, then reads: requests in flight together may
		// run in any order.
		data := pattern(100_000, 9)
		var writes, reads []protocol.Request
		var payloads [][]byte
		for i := range 4 {
			writes = append(writes, protocol.Request{Type: protocol.CmdWrite, Cookie: uint64(10 + i), Offset: uint64(i) * 100_000, Length: 100_000})
			payloads = append(payloads, data)
			reads = append(reads, protocol.Request{Type: protocol.CmdRead, Cookie: uint64(20 + i), Offset: uint64(i) * 100_000, Length: 100_000})
		}
		wait := st.sendAsync(writes, payloads...)
		for range writes {
			r := st.readReply()
			require.Equal(t, protocol.EOK, r.errno, "WRITE %d", r.cookie)
		}
		wait()
		wait = st.sendAsync(reads)
		for range reads {
			r := st.readReply()
			require.Equal(t, protocol.EOK, r.errno, "READ %d", r.cookie)
			require.Equal(t, data, r.data, "READ %d", r.cookie)
		}
		wait()
	})
}

func TestFlushTrimZeroCache(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		p := &probe{Backend: backend.NewMemory(1 << 20)}
		mem := p.Backend.(*backend.Memory)
		// A probe hides the capabilities; export the memory itself and
		// count syncs through a second export on the same memory.
		srv := &Server{Exports: []Export{{Name: "mem", Backend: mem}, {Name: "probe", Backend: p}}}
		st := newServerTester(t, strategy, srv)
		st.handshake("mem")
		data := pattern(3*65536, 1)
		st.write(1, 0, data)
		st.wantReply(1, protocol.EOK)

		st.flush(2)
		st.wantReply(2, protocol.EOK)
		st.trim(3, 1000, 70000)
		st.wantReply(3, protocol.EOK)
		st.zero(4, 100000, 5000, protocol.CmdFlagNoHole)
		st.wantReply(4, protocol.EOK)
		st.zero(5, 150000, 100, protocol.CmdFlagFastZero)
		st.wantReply(5, protocol.EOK)
		st.zero(6, 160000, 100, protocol.CmdFlagFUA)
		st.wantReply(6, protocol.EOK)
		st.cache(7, 0, 1<<20)
		st.wantReply(7, protocol.EOK)
		st.cache(8, 0, 0) // CACHE of length 0 is allowed
		st.wantReply(8, protocol.EOK)

		want := bytes.Clone(data)
		clear(want[1000:71000])
		clear(want[100000:105000])
		clear(want[150000:150100])
		clear(want[160000:160100])
		st.read(9, 0, uint32(len(want)))
		st.wantRead(9, want)

		// FUA write and FLUSH reach Sync on a backend with no FUAWriter.
		st2 := newServerTester(t, strategy, &Server{Exports: srv.Exports})
		st2.handshake("probe")
		st2.write(1, 0, []byte("x"), protocol.CmdFlagFUA)
		st2.wantReply(1, protocol.EOK)
		require.Equal(t, int64(1), p.syncs.Load(), "syncs after a FUA write")
		st2.flush(2)
		st2.wantReply(2, protocol.EOK)
		require.Equal(t, int64(2), p.syncs.Load(), "syncs after FLUSH")
		st2.disc()
		st2.wantClosed()
		require.Equal(t, int64(3), p.syncs.Load(), "syncs after DISC (flush on disconnect)")
	})
}

// TestDiscClosesBeforeSync: after DISC the client sees the connection
// close while the flush on disconnect is still running (libnbd waits for
// that close, so a slow sync would hold up every nbdcopy and qemu-img),
// and ServeConn returns only once the sync is done.
func TestDiscClosesBeforeSync(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		b := &slowSync{Backend: backend.NewMemory(1 << 20), entered: make(chan struct{}), release: make(chan struct{})}
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "s", Backend: b}}})
		st.handshake("s")
		st.write(1, 0, []byte("data"))
		st.wantReply(1, protocol.EOK)
		st.disc()
		<-b.entered
		st.client.wantClosed()
		select {
		case err := <-st.done:
			t.Fatalf("ServeConn returned (%v) before the flush on disconnect ended", err)
		default:
		}
		close(b.release)
		st.wantClosed()
		require.Equal(t, int64(1), b.syncs.Load())
	})
}

// slowSync is a backend whose Sync signals entered and waits for release.
type slowSync struct {
	backend.Backend
	entered, release chan struct{}
	syncs            atomic.Int64
}

func (b *slowSync) Sync() error {
	b.syncs.Add(1)
	close(b.entered)
	<-b.release
	return b.Backend.Sync()
}

// TestBareBackend: a backend with nothing but the core interface gets
// WRITE_ZEROES emulated, TRIM refused (it is not advertised), and
// FAST_ZERO answered with ENOTSUP because emulation is not fast.
func TestBareBackend(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := &Server{Exports: []Export{{Name: "bare", Backend: bare{backend.NewMemory(1 << 20)}}}}
		st := newServerTester(t, strategy, srv)
		st.start()
		ei := st.goExport("bare")
		require.Zero(t, ei.flags&(protocol.FlagSendTrim|protocol.FlagSendFastZero|protocol.FlagCanMultiConn),
			"flags %v: TRIM, FAST_ZERO and MULTI_CONN need backend support", ei.flags)
		require.NotZero(t, ei.flags&protocol.FlagSendWriteZeroes, "WRITE_ZEROES is emulated: %v", ei.flags)

		st.write(1, 0, pattern(8192, 3))
		st.wantReply(1, protocol.EOK)
		st.zero(2, 100, 5000, protocol.CmdFlagFastZero)
		st.wantReply(2, protocol.EINVAL) // not advertised: "SHOULD fail with NBD_EINVAL"
		st.zero(3, 100, 5000)
		st.wantReply(3, protocol.EOK)
		st.trim(4, 0, 4096)
		st.wantReply(4, protocol.EINVAL)
		want := pattern(8192, 3)
		clear(want[100:5100])
		st.read(5, 0, 8192)
		st.wantRead(5, want)
	})
}

// TestDecoratedExportFlags: a decorated backend is advertised as the
// backend it wraps (backend.Decorator): a fault injector over a backend
// without TRIM advertises no TRIM and answers BLOCK_STATUS without
// asking for extents, and over a memory backend it advertises what the
// memory backend does.
func TestDecoratedExportFlags(t *testing.T) {
	for name, inner := range map[string]backend.Backend{
		"memory": backend.NewMemory(1 << 20),
		"bare":   bare{backend.NewMemory(1 << 20)},
	} {
		for _, mode := range []protocol.Mode{protocol.ModeSimple, protocol.ModeStructured, protocol.ModeExtended} {
			plain, err := discoverCaps(&Export{Name: "p", Backend: inner})
			require.NoError(t, err)
			decorated, err := discoverCaps(&Export{Name: "d", Backend: backend.NewFault(inner)})
			require.NoError(t, err)
			require.Equal(t, plain.flags(mode), decorated.flags(mode), "%s, mode %v", name, mode)
			require.Equal(t, plain.extenter == nil, decorated.extenter == nil, "%s: extents asked of the decorator only if the backend has them", name)
		}
	}
	st := newServerTester(t, "pool", &Server{Exports: []Export{{Name: "f", Backend: backend.NewFault(bare{backend.NewMemory(1 << 20)})}}})
	st.handshakeSR("f")
	require.Zero(t, st.flags&protocol.FlagSendTrim, "flags %v: no TRIM the backend will not do", st.flags)
	st.blockStatus(1, 0, 1<<20)
	require.Equal(t, []extent{{length: 1 << 20}}, st.wantBlockStatus(1), "one data extent, as for the bare backend")
}

func TestWriteZeroesFastNoHole(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshake("mem")
		require.NotZero(t, st.flags&protocol.FlagSendFastZero, "memory advertises FAST_ZERO: %v", st.flags)
		st.zero(1, 0, 4096, protocol.CmdFlagFastZero|protocol.CmdFlagNoHole)
		st.wantReply(1, protocol.ENOTSUP)
		st.zero(2, 0, 4096, protocol.CmdFlagFastZero)
		st.wantReply(2, protocol.EOK)
	})
}

func TestDFRead(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshakeSR("mem")
		data := pattern(100_000, 4)
		st.write(1, 5, data)
		st.wantReply(1, protocol.EOK)
		st.read(2, 5, uint32(len(data)), protocol.CmdFlagDF)
		r := st.wantStructuredRead(2, 5, data)
		require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeOffsetData}, contentChunks(r.types), "DF READ: one data chunk")

		// Without structured replies DF is invalid.
		st2 := newServerTester(t, strategy, nil)
		st2.handshake("mem")
		st2.read(1, 0, 512, protocol.CmdFlagDF)
		st2.wantReply(1, protocol.EINVAL)
	})
}

// TestSparseStructuredRead: a structured READ over a range with holes
// reads back the right bytes whatever chunks it is sent in; where the
// whole READ fits one buffer, the holes go out as OFFSET_HOLE.
func TestSparseStructuredRead(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, memExport(1<<20))
		st.handshakeSR("mem")
		data := pattern(1000, 5)
		st.write(1, 65536+10, data)
		st.wantReply(1, protocol.EOK)
		want := make([]byte, 3*65536)
		copy(want[65536+10:], data)
		st.read(2, 0, uint32(len(want)))
		r := st.wantStructuredRead(2, 0, want)
		if strategy != "stream" {
			require.Contains(t, r.types, protocol.ReplyTypeOffsetHole, "chunks of a sparse READ")
		}
		st.read(3, 2*65536, 65536) // all hole
		st.wantStructuredRead(3, 2*65536, make([]byte, 65536))
	})
}

// splitExtents reports every 4 KiB as an extent of its own: data for
// the first 8 KiB, a hole for the next 8 KiB, data after.
type splitExtents struct{ backend.Backend }

func (splitExtents) Extents(off, length int64, fn func(backend.Extent) bool) error {
	for pos := off - off%4096; pos < off+length; pos += 4096 {
		var f backend.ExtentFlags
		if pos >= 8192 && pos < 16384 {
			f = backend.ExtentHole | backend.ExtentZero
		}
		if !fn(backend.Extent{Offset: pos, Length: 4096, Flags: f}) {
			return nil
		}
	}
	return nil
}

// TestBlockStatusMergesExtents: runs a backend reports in pieces go out as
// one descriptor each, so REQ_ONE answers with the whole run.
func TestBlockStatusMergesExtents(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "s", Backend: splitExtents{backend.NewMemory(64 << 10)}}}})
		st.handshakeSR("s")
		const hz = protocol.StateHole | protocol.StateZero
		st.blockStatus(1, 100, 32<<10)
		require.Equal(t, []extent{{8192 - 100, 0}, {8192, hz}, {16384 + 100, 0}}, st.wantBlockStatus(1))
		st.blockStatus(2, 0, 64<<10, protocol.CmdFlagReqOne)
		require.Equal(t, []extent{{8192, 0}}, st.wantBlockStatus(2), "REQ_ONE")
	})
}

func TestBlockStatus(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		const chunk = 64 << 10
		st := newServerTester(t, strategy, memExport(4*chunk))
		st.handshakeSR("mem")
		const hz = protocol.StateHole | protocol.StateZero

		st.blockStatus(1, 0, 4*chunk)
		require.Equal(t, []extent{{4 * chunk, hz}}, st.wantBlockStatus(1), "empty export")

		st.write(2, chunk+5, []byte("data"))
		st.wantReply(2, protocol.EOK)
		st.blockStatus(3, 0, 4*chunk)
		require.Equal(t, []extent{{chunk, hz}, {chunk, 0}, {2 * chunk, hz}}, st.wantBlockStatus(3), "after a write")
		st.blockStatus(4, 100, 4*chunk-100, protocol.CmdFlagReqOne)
		require.Equal(t, []extent{{chunk - 100, hz}}, st.wantBlockStatus(4), "REQ_ONE at a hole")
		st.blockStatus(5, chunk+100, 100, protocol.CmdFlagReqOne)
		require.Equal(t, []extent{{100, 0}}, st.wantBlockStatus(5), "REQ_ONE inside data")

		// NO_HOLE keeps the chunk allocated; a plain zero or trim frees it.
		st.zero(6, chunk, chunk, protocol.CmdFlagNoHole)
		st.wantReply(6, protocol.EOK)
		st.blockStatus(7, chunk, chunk)
		require.Equal(t, []extent{{chunk, 0}}, st.wantBlockStatus(7), "after WRITE_ZEROES NO_HOLE")
		st.trim(8, chunk, chunk)
		st.wantReply(8, protocol.EOK)
		st.blockStatus(9, 0, 4*chunk)
		require.Equal(t, []extent{{4 * chunk, hz}}, st.wantBlockStatus(9), "after TRIM")

		st.blockStatus(10, 4*chunk-1, 2)
		st.wantStructuredError(10, protocol.EINVAL)
		st.blockStatus(11, 0, 0)
		st.wantStructuredError(11, protocol.EINVAL)
	})
}

// TestBlockStatusNoExtents: a backend that cannot tell reports the range
// as one allocated extent.
func TestBlockStatusNoExtents(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "b", Backend: bare{backend.NewMemory(1 << 20)}}}})
		st.handshakeSR("b")
		st.blockStatus(1, 4096, 8192)
		require.Equal(t, []extent{{8192, 0}}, st.wantBlockStatus(1))
	})
}

func TestBlockStatusWithoutMetaContext(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshake("mem")
		st.blockStatus(1, 0, 512)
		st.wantReply(1, protocol.EINVAL)
		st.read(2, 0, 1)
		st.wantRead(2, []byte{0})
	})
}

// TestOutOfOrder: 64 requests in flight at once; one slow READ does not
// hold back the replies behind it.
func TestOutOfOrder(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		p, release := newGatedProbe(t, func(off int64) bool { return off == 0 })
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "p", Backend: p}}})
		st.handshake("p")
		const n = DefaultQueueDepth
		want := map[uint64][]byte{}
		for i := 1; i < n; i++ {
			data := pattern(4096, byte(i))
			st.write(uint64(i), uint64(i)*4096, data)
			want[uint64(i)] = data
		}
		for range n - 1 {
			st.readReply()
		}
		st.read(0, 0, 4096) // waits in the backend until released
		for i := 1; i < n; i++ {
			st.read(uint64(i), uint64(i)*4096, 4096)
		}
		// All 63 replies behind the stuck READ arrive while it is stuck.
		for range n - 1 {
			r := st.readReply()
			require.Equal(t, protocol.EOK, r.errno, "reply %d", r.cookie)
			require.NotEqual(t, uint64(0), r.cookie, "the stuck READ answered")
			require.Equal(t, want[r.cookie], r.data, "data of READ %d", r.cookie)
			delete(want, r.cookie)
		}
		release()
		st.wantRead(0, make([]byte, 4096))
	})
}

// TestQueueDepth: no more than QueueDepth requests of one connection reach
// the backend at once, and that many do.
func TestQueueDepth(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		const depth = 4
		p, release := newGatedProbe(t, nil)
		srv := &Server{QueueDepth: depth, Exports: []Export{{Name: "p", Backend: p}}}
		st := newServerTester(t, strategy, srv)
		st.handshake("p")
		const n = 32
		var reqs []protocol.Request
		for i := range n {
			reqs = append(reqs, protocol.Request{Type: protocol.CmdRead, Cookie: uint64(i), Offset: uint64(i) * 512, Length: 512})
		}
		wait := st.sendAsync(reqs)
		for range depth {
			<-p.started
		}
		select {
		case off := <-p.started:
			t.Fatalf("READ at %d reached the backend with %d already in it; QueueDepth is %d", off, depth, depth)
		case <-time.After(100 * time.Millisecond):
		}
		release()
		for range n {
			r := st.readReply()
			require.Equal(t, protocol.EOK, r.errno)
		}
		wait()
		require.Equal(t, int64(n), p.reads.Load(), "backend reads")
		require.Equal(t, int64(depth), p.peak.Load(), "peak concurrent backend reads")
	})
}

// TestGoNBDBackends: go-nbd v0.3.2's own backends plug into Server
// unchanged.
func TestGoNBDBackends(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		path := filepath.Join(t.TempDir(), "img")
		require.NoError(t, os.WriteFile(path, make([]byte, 1<<20), 0o600))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		srv := &Server{Exports: []Export{
			{Name: "memory", Backend: gonbd.NewMemoryBackend(make([]byte, 1<<20))},
			{Name: "file", Backend: gonbd.NewFileBackend(f)},
		}}
		for _, name := range []string{"memory", "file"} {
			st := newServerTester(t, strategy, srv)
			st.handshake(name)
			require.Equal(t, uint64(1<<20), st.size)
			data := pattern(100_000, 7)
			st.write(1, 12345, data, protocol.CmdFlagFUA)
			st.wantReply(1, protocol.EOK)
			st.read(2, 12345, uint32(len(data)))
			st.wantRead(2, data)
			st.zero(3, 12345, 10)
			st.wantReply(3, protocol.EOK)
			st.read(4, 12340, 20)
			st.wantRead(4, append(make([]byte, 15), data[10:15]...))
			st.read(5, 1<<20-1, 2) // would panic go-nbd's MemoryBackend: refused first
			st.wantReply(5, protocol.EINVAL)
			st.flush(6)
			st.wantReply(6, protocol.EOK)
		}
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.True(t, bytes.Equal(got[12355:12345+100_000], pattern(100_000, 7)[10:]), "file contents")
	})
}

// TestDiscWaitsForInflight: DISC lets the requests before it finish and
// be answered, then flushes and closes.
func TestDiscWaitsForInflight(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultWrite, Delay: 100 * time.Millisecond})
		p := &probe{Backend: f}
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "p", Backend: p}}})
		st.handshake("p")
		st.write(1, 0, []byte("slow"))
		st.disc()
		st.wantReply(1, protocol.EOK)
		st.wantClosed()
		require.Equal(t, int64(1), p.syncs.Load(), "syncs on disconnect")
		got := make([]byte, 4)
		_, err := p.ReadAt(got, 0)
		require.NoError(t, err)
		require.Equal(t, "slow", string(got))
	})
}

// TestRequestHeaderGolden pins the bytes of one request and its reply as
// the client codec sees them, so a codec bug cannot hide a server bug.
func TestRequestHeaderGolden(t *testing.T) {
	var hdr [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdRead, Flags: protocol.CmdFlagFUA, Cookie: 0x0102030405060708, Offset: 0x1000, Length: 0x200}.Put(&hdr)
	const want = "\x25\x60\x95\x13" + "\x00\x01" + "\x00\x00" + "\x01\x02\x03\x04\x05\x06\x07\x08" +
		"\x00\x00\x00\x00\x00\x00\x10\x00" + "\x00\x00\x02\x00"
	if string(hdr[:]) != want {
		t.Fatalf("request: got %x; want %x", hdr, want)
	}
	st := newServerTester(t, "pool", nil)
	st.handshake("mem")
	st.writeRaw([]byte(strings.Replace(want, "\x00\x01", "\x00\x00", 1))) // without FUA
	var rep [protocol.SimpleReplySize + 0x200]byte
	st.readFull(rep[:])
	wantRep := "\x67\x44\x66\x98" + "\x00\x00\x00\x00" + "\x01\x02\x03\x04\x05\x06\x07\x08" + string(make([]byte, 0x200))
	if string(rep[:]) != wantRep {
		t.Fatalf("reply: got %x; want %x", rep, wantRep)
	}
	require.Equal(t, uint32(protocol.SimpleReplyMagic), binary.BigEndian.Uint32(rep[:]))
}

// TestSlowStreamedRead: a slow READ too large for one buffer (streamed)
// must not hold back the replies behind it either: a slow request must
// never stall the ones behind it.
// The first chunk is read on the request's own goroutine; later chunks
// must follow the header on the wire anyway under simple replies.
func TestSlowStreamedRead(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		// The first piece of READ 1 waits until READ 2 has been answered
		// (a gate, not a delay, so a starved CI machine cannot reorder
		// them); if READ 2 had to wait for it, its reply would time out.
		p, release := newGatedProbe(t, func(off int64) bool { return off == 0 })
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: p}}}, bufferConfig{budget: 8 << 10})
		st.handshake("f")
		st.read(1, 0, 64<<10) // streamed in 4 or 8 KiB pieces; the first is slow
		st.read(2, 512<<10, 512)
		require.Equal(t, uint64(2), st.readReply().cookie, "the fast READ's reply comes first")
		release()
		require.Equal(t, uint64(1), st.readReply().cookie, "then the slow READ's")
	})
}

// TestSlowReadOnSpare: a READ that finds the budget full still reads its
// first chunk on its own goroutine (through the connection's READ spare),
// not on the reply writer, so a slow backend read there holds back no
// other reply.
func TestSlowReadOnSpare(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		p, release := newGatedProbe(t, func(off int64) bool { return off == 0 || off == 256<<10 })
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: p}}}, bufferConfig{budget: 8 << 10})
		st.handshake("f")
		st.read(1, 0, 8<<10) // takes the whole budget, then waits in the backend
		require.Equal(t, int64(0), <-p.started)
		st.read(2, 256<<10, 64<<10) // budget full: on the spare, and slow
		require.Equal(t, int64(256<<10), <-p.started)
		st.flush(3)
		require.Equal(t, uint64(3), st.readReply().cookie, "the FLUSH is answered while both READs wait")
		release()
		got := map[uint64]bool{st.readReply().cookie: true, st.readReply().cookie: true}
		require.Equal(t, map[uint64]bool{1: true, 2: true}, got)
	})
}

// TestReadSpareKeepsItsSize: a short READ on the READ spare uses only a
// slice of it; the spare goes back whole, so a later READ on it is not
// streamed in pieces of the short READ's length.
func TestReadSpareKeepsItsSize(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		p, release := newGatedProbe(t, func(off int64) bool { return off == 0 })
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: p}}}, bufferConfig{budget: 8 << 10})
		st.handshake("f")
		st.read(1, 0, 8<<10) // takes the whole budget, then waits in the backend
		require.Equal(t, int64(0), <-p.started)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for { // a spare cut short would start thousands of reads
				select {
				case <-p.started:
				case <-stop:
					return
				}
			}
		}()
		st.read(2, 64<<10, 1) // budget full: on the spare, cut to one byte
		require.Equal(t, uint64(2), st.readReply().cookie)
		before := p.reads.Load()
		st.read(3, 128<<10, 16<<10) // on the spare again
		require.Equal(t, uint64(3), st.readReply().cookie)
		// One read on the 64 KiB spare; at most four where the stream
		// strategy found 4 KiB of budget free; 16384 on a one-byte spare.
		require.LessOrEqual(t, p.reads.Load()-before, int64(4), "backend reads of a 16 KiB READ")
		release()
		require.Equal(t, uint64(1), st.readReply().cookie)
	})
}

// TestPipelinedInOneWrite: requests that arrive in one segment are parsed
// one by one; a payload is never read past its length. (go-nbd v0.3.0 read
// a WRITE payload into its whole held buffer and swallowed the header of
// the next request.)
func TestPipelinedInOneWrite(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshake("mem")
		big, small := pattern(100_000, 1), []byte("tiny")
		var b []byte
		b = append(b, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Cookie: 1, Offset: 0, Length: uint64(len(big))}, big)...)
		b = append(b, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Cookie: 2, Offset: 200_000, Length: uint64(len(small))}, small)...)
		b = append(b, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdFlush, Cookie: 3}, nil)...)
		b = append(b, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Cookie: 4, Offset: 300_000, Length: uint64(len(small))}, small)...)
		st.writeRaw(b)
		got := map[uint64]protocol.Errno{}
		for range 4 {
			r := st.readReply()
			got[r.cookie] = r.errno
		}
		require.Equal(t, map[uint64]protocol.Errno{1: 0, 2: 0, 3: 0, 4: 0}, got, "replies")
		st.read(5, 0, uint32(len(big)))
		st.wantRead(5, big)
		st.read(6, 200_000, 4)
		st.wantRead(6, small)
		st.read(7, 300_000, 4)
		st.wantRead(7, small)
	})
}

// TestFileBackend: nbdd's own file backend under every strategy: large
// reads (sent with sendfile(2) where the strategy streams), writes, trims
// and block status from SEEK_DATA/SEEK_HOLE.
func TestFileBackend(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		path := filepath.Join(t.TempDir(), "img")
		require.NoError(t, os.WriteFile(path, nil, 0o600))
		require.NoError(t, os.Truncate(path, 4<<20))
		f, err := backend.OpenFile(path, false)
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		for _, sr := range []bool{false, true} {
			st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: f}}})
			if sr {
				st.handshakeSR("f")
			} else {
				st.handshake("f")
			}
			data := pattern(300_000, 1)
			st.write(1, 1<<20+7, data, protocol.CmdFlagFUA)
			st.wantReply(1, protocol.EOK)
			st.read(2, 1<<20+7, uint32(len(data)))
			if sr {
				st.wantStructuredRead(2, 1<<20+7, data)
				st.blockStatus(3, 0, 4<<20)
				ext := st.wantBlockStatus(3)
				require.NotEmpty(t, ext)
				require.Equal(t, protocol.StateHole|protocol.StateZero, ext[0].flags, "first extent of a sparse file: %v", ext)
			} else {
				st.wantRead(2, data)
			}
			st.trim(4, 1<<20, 1<<20)
			st.wantReply(4, protocol.EOK)
			st.read(5, 1<<20+7, 100)
			if sr {
				st.wantStructuredRead(5, 1<<20+7, make([]byte, 100))
			} else {
				st.wantRead(5, make([]byte, 100))
			}
		}
	})
}

// TestDiscWaitsForTrailer: a READ whose data chunk went out unfinished
// (DF, streamed) counts as in flight until its NONE chunk is sent, so a
// DISC right behind it does not hang up before the reply is complete
// (proto.md "NBD_CMD_DISC": the server MUST handle all outstanding
// requests).
func TestDiscWaitsForTrailer(t *testing.T) {
	p := &probe{Backend: backend.NewMemory(1 << 20)} // blocking: READs on goroutines of their own
	st := newServerTester(t, "stream", &Server{Exports: []Export{{Name: "p", Backend: p}}})
	st.handshakeSR("p")
	const n = 16 << 10 // more than the stream chunk: streamed
	st.read(1, 0, n, protocol.CmdFlagDF)
	st.disc()
	var hdr [protocol.ChunkHeaderSize + 8]byte
	st.readFull(hdr[:])
	require.Equal(t, protocol.ReplyTypeOffsetData, protocol.ReplyType(binary.BigEndian.Uint16(hdr[6:])))
	require.Zero(t, protocol.ReplyFlag(binary.BigEndian.Uint16(hdr[4:]))&protocol.ReplyFlagDone, "data chunk marked final")
	st.readFull(make([]byte, n))
	time.Sleep(100 * time.Millisecond) // a slow client: the hang-up would have come by now
	var tr [protocol.ChunkHeaderSize]byte
	st.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	st.readFull(tr[:])
	require.Equal(t, protocol.ReplyTypeNone, protocol.ReplyType(binary.BigEndian.Uint16(tr[6:])))
	require.NotZero(t, protocol.ReplyFlag(binary.BigEndian.Uint16(tr[4:]))&protocol.ReplyFlagDone, "NONE chunk ends the reply")
	st.wantClosed()
}

// delayedSync is a memory export whose Sync waits, as a persistent
// backend.Mapped's write-back does.
type delayedSync struct {
	*backend.Memory
	delay time.Duration
}

func (b delayedSync) Sync() error     { time.Sleep(b.delay); return nil }
func (b delayedSync) SyncWaits() bool { return true }

// TestSlowSyncNotInline: on a backend that never blocks but whose Sync may
// wait (backend.SyncWaiter), FLUSH and FUA writes run on goroutines of
// their own: the replies of requests before them, and the requests after
// them, do not wait for the write-back.
func TestSlowSyncNotInline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		syncer protocol.Request
	}{
		{"flush", protocol.Request{Type: protocol.CmdFlush, Cookie: 2}},
		{"fua write", protocol.Request{Type: protocol.CmdWrite, Flags: protocol.CmdFlagFUA, Cookie: 2, Length: 4096}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := delayedSync{backend.NewMemory(1 << 20), 500 * time.Millisecond}
			st := newServerTester(t, "", &Server{Exports: []Export{{Name: "m", Backend: b}}})
			st.handshake("m")
			var raw []byte
			raw = append(raw, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Cookie: 1, Length: 4096}, make([]byte, 4096))...)
			var payload []byte
			if tc.syncer.Type == protocol.CmdWrite {
				payload = make([]byte, 4096)
			}
			raw = append(raw, requestBytes(protocol.ModeSimple, tc.syncer.Extended(), payload)...)
			raw = append(raw, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdRead, Cookie: 3, Length: 4096}, nil)...)
			begin := time.Now()
			st.writeRaw(raw)
			for _, want := range []uint64{1, 3} {
				r := st.readReply()
				require.Equal(t, want, r.cookie, "replies before the sync's")
				if r.cookie == 3 {
					st.readFull(make([]byte, 4096))
				}
			}
			require.Less(t, time.Since(begin), b.delay, "a reply waited for the write-back")
			st.wantReply(2, protocol.EOK)
		})
	}
}

// TestStreamedFUASyncOffReader: a FUA WRITE streamed on the reader (larger
// than the strategy's chunk) has its sync run on a goroutine of its own,
// so the requests behind it do not wait for the write-back.
func TestStreamedFUASyncOffReader(t *testing.T) {
	b := delayedSync{backend.NewMemory(1 << 20), 500 * time.Millisecond}
	st := newServerTester(t, "stream", &Server{Exports: []Export{{Name: "m", Backend: b}}})
	st.handshake("m")
	var raw []byte
	raw = append(raw, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Flags: protocol.CmdFlagFUA, Cookie: 2, Length: 16 << 10}, make([]byte, 16<<10))...)
	raw = append(raw, requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdRead, Cookie: 3, Length: 4096}, nil)...)
	begin := time.Now()
	st.writeRaw(raw)
	r := st.readReply()
	require.Equal(t, uint64(3), r.cookie, "the READ's reply comes first")
	st.readFull(make([]byte, 4096))
	require.Less(t, time.Since(begin), b.delay, "the READ waited for the FUA write's sync")
	st.wantReply(2, protocol.EOK)
}
