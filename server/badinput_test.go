package server

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// TestBadRequests: every request the spec lets a server refuse is
// answered with its errno, and the connection stays in sync (no
// go-nbd-style desync after an unknown command).
func TestBadRequests(t *testing.T) {
	const size = 1 << 20
	const maxReq = 64 << 10
	payload := pattern(4096, 6)
	tests := []struct {
		name    string
		req     protocol.Request
		payload []byte
		want    protocol.Errno
	}{
		{"read past end", protocol.Request{Type: protocol.CmdRead, Offset: size, Length: 1}, nil, protocol.EINVAL},
		{"read straddling end", protocol.Request{Type: protocol.CmdRead, Offset: size - 10, Length: 20}, nil, protocol.EINVAL},
		{"read offset overflow", protocol.Request{Type: protocol.CmdRead, Offset: 1<<64 - 1, Length: 2}, nil, protocol.EINVAL},
		{"read too long", protocol.Request{Type: protocol.CmdRead, Length: maxReq + 1}, nil, protocol.EINVAL},
		{"read empty", protocol.Request{Type: protocol.CmdRead, Length: 0}, nil, protocol.EINVAL},
		{"write past end", protocol.Request{Type: protocol.CmdWrite, Offset: size, Length: 4096}, payload, protocol.ENOSPC},
		{"write straddling end", protocol.Request{Type: protocol.CmdWrite, Offset: size - 100, Length: 4096}, payload, protocol.ENOSPC},
		{"write empty", protocol.Request{Type: protocol.CmdWrite, Length: 0}, nil, protocol.EINVAL},
		// Over the maximum but not over 32 MiB: a clean error, for a client
		// that never asked for the constraints (proto.md "Size constraints").
		{"write too long", protocol.Request{Type: protocol.CmdWrite, Length: maxReq + 4096}, pattern(maxReq+4096, 7), protocol.EINVAL},
		{"trim past end", protocol.Request{Type: protocol.CmdTrim, Offset: size - 1, Length: 2}, nil, protocol.EINVAL},
		{"zero past end", protocol.Request{Type: protocol.CmdWriteZeroes, Offset: size - 1, Length: 2}, nil, protocol.ENOSPC},
		{"cache past end", protocol.Request{Type: protocol.CmdCache, Offset: size + 1}, nil, protocol.EINVAL},
		{"unknown command", protocol.Request{Type: 200, Length: 4096}, nil, protocol.EINVAL},
		{"resize", protocol.Request{Type: protocol.CmdResize, Offset: 2 * size}, nil, protocol.EINVAL},
		{"read with NO_HOLE", protocol.Request{Type: protocol.CmdRead, Flags: protocol.CmdFlagNoHole, Length: 1}, nil, protocol.EINVAL},
		{"write with REQ_ONE", protocol.Request{Type: protocol.CmdWrite, Flags: protocol.CmdFlagReqOne, Length: 4096}, payload, protocol.EINVAL},
		{"flush with unknown flag", protocol.Request{Type: protocol.CmdFlush, Flags: 1 << 15}, nil, protocol.EINVAL},
		{"trim with FAST_ZERO", protocol.Request{Type: protocol.CmdTrim, Flags: protocol.CmdFlagFastZero, Length: 1}, nil, protocol.EINVAL},
	}
	run(t, func(t *testing.T, strategy string) {
		srv := memExport(size)
		srv.MaxRequestSize = maxReq
		st := newServerTester(t, strategy, srv)
		st.handshake("mem")
		for i, tt := range tests {
			cookie := uint64(i + 1)
			tt.req.Cookie = cookie
			st.send(tt.req, tt.payload)
			r := st.readReply()
			if r.cookie != cookie || r.errno != tt.want {
				t.Fatalf("%s: got cookie %d %v; want cookie %d %v", tt.name, r.cookie, r.errno, cookie, tt.want)
			}
			// The stream is still in sync: a READ right after works.
			st.read(1000+cookie, size-4, 4)
			st.wantRead(1000+cookie, make([]byte, 4))
		}
	})
}

// TestOversizedWriteCloses: a WRITE longer than both the maximum and
// 32 MiB is a framing violation; the server closes without reading (or
// allocating) its payload.
func TestOversizedWriteCloses(t *testing.T) {
	for _, tc := range []struct{ max, length uint32 }{
		{64 << 10, protocol.DefaultMaxPayload + 1},
		{48 << 20, 48<<20 + 1},
	} {
		run(t, func(t *testing.T, strategy string) {
			srv := memExport(1 << 20)
			srv.MaxRequestSize = tc.max
			st := newServerTester(t, strategy, srv)
			st.handshake("mem")
			before := st.sc.n.Load()
			var hdr [protocol.RequestSize]byte
			protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Length: tc.length}.Put(&hdr)
			st.writeRaw(hdr[:])
			st.wantClosed()
			if got := st.sc.n.Load() - before; got != protocol.RequestSize {
				t.Fatalf("max %d: server read %d bytes after the handshake; want %d (the header only)", tc.max, got, protocol.RequestSize)
			}
		})
	}
}

func TestBadMagicCloses(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshake("mem")
		var hdr [protocol.RequestSize]byte
		protocol.Request{Type: protocol.CmdRead, Cookie: 1, Length: 1}.Put(&hdr)
		hdr[0] ^= 0xff
		st.writeRaw(hdr[:])
		st.wantClosed()
		st.wantServeResult(func(err error) bool { return errors.Is(err, protocol.ErrBadMagic) }, "ErrBadMagic")
	})
}

// TestTruncatedHeaderCloses: a client that goes away mid-header ends the
// connection quietly.
func TestTruncatedHeaderCloses(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshake("mem")
		st.writeRaw([]byte{0x25, 0x60, 0x95})
		st.nc.Close()
		st.wantServeResult(func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, "io.ErrUnexpectedEOF")
	})
}

func TestReadOnly(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		for _, exp := range []Export{
			{Name: "ro", ReadOnly: true, Backend: backend.NewMemory(1 << 20)},
			{Name: "ro", Backend: backend.ReadOnly(backend.NewMemory(1 << 20))},
		} {
			st := newServerTester(t, strategy, &Server{Exports: []Export{exp}})
			st.start()
			ei := st.goExport("ro")
			require.NotZero(t, ei.flags&protocol.FlagReadOnly, "READ_ONLY in %v", ei.flags)
			require.Zero(t, ei.flags&(protocol.FlagSendTrim|protocol.FlagSendWriteZeroes|protocol.FlagSendFUA|protocol.FlagSendFastZero),
				"write flags on a read-only export: %v", ei.flags)
			st.write(1, 0, pattern(70000, 1)) // larger than a stream chunk: drained in pieces
			st.wantReply(1, protocol.EPERM)
			st.trim(2, 0, 4096)
			st.wantReply(2, protocol.EPERM)
			st.zero(3, 0, 4096)
			st.wantReply(3, protocol.EPERM)
			st.flush(4)
			st.wantReply(4, protocol.EOK)
			st.read(5, 0, 16)
			st.wantRead(5, make([]byte, 16))
		}
	})
}

// TestBackendFault: a backend error fails that request alone, with the
// errno it maps to; the connection and other requests are unaffected.
func TestBackendFault(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		f := backend.NewFault(backend.NewMemory(1<<20),
			backend.FaultRule{Op: backend.FaultRead, Offset: 4096, Length: 4096},
			backend.FaultRule{Op: backend.FaultWrite, Offset: 65536, Length: 1, Err: errors.Join(errors.New("disk full"), os.ErrPermission)},
			backend.FaultRule{Op: backend.FaultTrim, Offset: 0, Length: 4096, Err: errors.New("odd")},
		)
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: f}}})
		st.handshake("f")
		st.read(1, 0, 4096)
		st.wantRead(1, make([]byte, 4096))
		st.read(2, 4000, 200)
		st.wantReply(2, protocol.EIO)
		st.read(3, 8192, 4096)
		st.wantRead(3, make([]byte, 4096))
		st.write(4, 65000, pattern(1000, 1))
		st.wantReply(4, protocol.EPERM)
		st.write(5, 0, pattern(1000, 1))
		st.wantReply(5, protocol.EOK)
		st.trim(6, 0, 10)
		st.wantReply(6, protocol.EIO)
		require.Equal(t, []int64{1, 1, 1}, f.Injected(), "faults injected")
	})
}

func TestStructuredError(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultRead, Offset: 0, Length: 4096})
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: f}}})
		st.handshakeSR("f")
		st.read(1, 0, 512)
		msg := st.wantStructuredError(1, protocol.EIO)
		require.Contains(t, msg, "injected read fault", "error chunk message")
		st.read(2, 1<<20, 1) // refused by validation: the message says why
		msg = st.wantStructuredError(2, protocol.EINVAL)
		require.Contains(t, msg, "past the end")
		// Replies to other commands stay simple.
		st.write(3, 0, []byte("x"))
		r := st.wantReply(3, protocol.EOK)
		require.False(t, r.structured, "WRITE reply is simple")
		st.read(4, 8192, 512)
		st.wantStructuredRead(4, 8192, make([]byte, 512))
	})
}

// TestStreamedReadFailsAfterHeader: under simple replies a streamed READ
// whose backend fails after the header went out can only end in a hard
// disconnect (proto.md "Simple reply message").
func TestStreamedReadFailsAfterHeader(t *testing.T) {
	f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultRead, Offset: 8192, Length: 4096})
	st := newServerTester(t, "stream", &Server{Exports: []Export{{Name: "f", Backend: f}}})
	st.handshake("f")
	st.send(protocol.Request{Type: protocol.CmdRead, Cookie: 1, Length: 16384}, nil)
	var hdr [protocol.SimpleReplySize]byte
	st.readFull(hdr[:])
	sr, err := protocol.DecodeSimpleReply(&hdr)
	require.NoError(t, err)
	require.Equal(t, protocol.SimpleReply{Cookie: 1}, sr, "reply header sent before the failure")
	st.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	got, err := io.ReadAll(st.br)
	require.NoError(t, err)
	if len(got) >= 16384 {
		t.Fatalf("got all %d bytes of a READ that failed at 8192", len(got))
	}
	require.Equal(t, make([]byte, len(got)), got, "the data before the failure")
	st.wantClosed()
	require.Equal(t, int64(1), exportStats(st.srv, "f").Aborted, "Aborted")
}

// TestStreamedDFReadFailsAfterHeader: under structured replies a DF READ
// is one data chunk, which the server does not mark final while it may
// still fail; when the backend fails part way, the chunk is padded with
// zeros, an ERROR_OFFSET chunk says where, and the connection carries on
// (proto.md "NBD_CMD_READ").
func TestStreamedDFReadFailsAfterHeader(t *testing.T) {
	mem := backend.NewMemory(1 << 20)
	data := pattern(16384, 5)
	_, err := mem.WriteAt(data, 0)
	require.NoError(t, err)
	f := backend.NewFault(mem, backend.FaultRule{Op: backend.FaultRead, Offset: 8192, Length: 4096})
	st := newServerTester(t, "stream", &Server{Exports: []Export{{Name: "f", Backend: f}}})
	st.handshakeSR("f")
	st.read(1, 0, 16384, protocol.CmdFlagDF)
	r := st.readReply()
	require.Equal(t, uint64(1), r.cookie)
	require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeOffsetData, protocol.ReplyTypeErrorOffset}, r.types)
	require.Equal(t, protocol.EIO, r.errno)
	require.Equal(t, uint64(8192), r.errOffset)
	require.Equal(t, append(append([]byte{}, data[:8192]...), make([]byte, 8192)...), r.data, "the data, then zeros")
	es := exportStats(st.srv, "f")
	require.Zero(t, es.Aborted, "no disconnect")
	require.Equal(t, int64(1), es.Errors[protocol.EIO], "the ERROR_OFFSET counts as an EIO reply")
	st.read(2, 0, 4096)
	st.wantStructuredRead(2, 0, data[:4096])
}

// TestStreamedReadEarlyFailure: a streamed READ whose first chunk fails is
// answered with a proper error (simple or structured), and the connection
// survives: nothing of the reply had gone out yet.
func TestStreamedReadEarlyFailure(t *testing.T) {
	for _, sr := range []bool{false, true} {
		f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultRead, Offset: 0, Length: 1})
		st := newServerTester(t, "stream", &Server{Exports: []Export{{Name: "f", Backend: f}}})
		if sr {
			st.handshakeSR("f")
		} else {
			st.handshake("f")
		}
		st.read(1, 0, 16384)
		if sr {
			require.Contains(t, st.wantStructuredError(1, protocol.EIO), "injected")
		} else {
			st.wantReply(1, protocol.EIO)
		}
		data := pattern(16384, 2)
		st.write(2, 4096, data)
		st.wantReply(2, protocol.EOK)
		st.read(3, 4096, 16384)
		if sr {
			st.wantStructuredRead(3, 4096, data)
		} else {
			st.wantRead(3, data)
		}
	}
}

// TestFlushAndFUAErrors: a failed Sync reaches the client as EIO, for
// FLUSH and for a FUA write: flush errors are not swallowed.
func TestFlushAndFUAErrors(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		// Both as it is (FUA through Fault.WriteAtFUA) and bare (FUA as
		// WriteAt then Sync by the server).
		for _, f := range []backend.Backend{
			backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultSync}),
			bare{backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultSync})},
		} {
			st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: f}}})
			st.handshake("f")
			st.flush(1)
			st.wantReply(1, protocol.EIO)
			st.write(2, 0, pattern(70000, 1), protocol.CmdFlagFUA)
			st.wantReply(2, protocol.EIO)
			st.write(3, 0, []byte("small"), protocol.CmdFlagFUA)
			st.wantReply(3, protocol.EIO)
			st.write(4, 0, []byte("no FUA"))
			st.wantReply(4, protocol.EOK)
		}
	})
}

// TestWriteFailsMidPayload: a WRITE whose backend fails part way (several
// chunks under a small budget) is answered with the error after its whole
// payload has been read: the next request parses.
func TestWriteFailsMidPayload(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultWrite, Offset: 40000, Length: 1, Err: syscall.ENOSPC})
		srv := &Server{Exports: []Export{{Name: "f", Backend: f}}}
		st := newServerTester(t, strategy, srv, bufferConfig{budget: 8 << 10})
		st.handshake("f")
		st.write(1, 0, pattern(100_000, 1))
		st.wantReply(1, protocol.ENOSPC)
		st.write(2, 200_000, []byte("after"))
		st.wantReply(2, protocol.EOK)
		st.read(3, 200_000, 5)
		st.wantRead(3, []byte("after"))
	})
}

// sizeless is a backend whose Size fails.
type sizeless struct{ backend.Backend }

func (sizeless) Size() (int64, error) { return 0, errors.New("device went away") }

func TestExportEdgeCases(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := &Server{Exports: []Export{
			{Name: "empty", Backend: backend.NewMemory(0)},
			{Name: "odd", Backend: backend.NewMemory(12345)},
			{Name: "broken", Backend: sizeless{backend.NewMemory(4096)}},
		}}
		st := newServerTester(t, strategy, srv)
		st.start()
		_, rep := st.infoOrGoErr(protocol.OptGo, "broken")
		require.Equal(t, protocol.RepErrPlatform, rep.typ, "GO on an export whose size fails")
		require.Equal(t, uint64(0), st.info("empty").size)
		st.goExport("odd")
		require.Equal(t, uint64(12345), st.size)
		st.write(1, 12340, []byte("12345"))
		st.wantReply(1, protocol.EOK)
		st.read(2, 12340, 5)
		st.wantRead(2, []byte("12345"))
		st.read(3, 12340, 6)
		st.wantReply(3, protocol.EINVAL)

		st2 := newServerTester(t, strategy, srv)
		st2.handshake("empty")
		st2.read(1, 0, 1)
		st2.wantReply(1, protocol.EINVAL)
		st2.cache(2, 0, 0)
		st2.wantReply(2, protocol.EOK)
		st2.flush(3)
		st2.wantReply(3, protocol.EOK)
	})
}

// TestSparseReadError: a structured READ over holes and data whose data
// part fails is one error reply, not a partial sparse reply.
func TestSparseReadError(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultRead, Offset: 65536 + 10, Length: 1})
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "f", Backend: f}}})
		st.handshakeSR("f")
		st.write(1, 65536, pattern(1000, 1))
		st.wantReply(1, protocol.EOK)
		st.read(2, 0, 3*65536)
		require.Contains(t, st.wantStructuredError(2, protocol.EIO), "injected")
		st.read(3, 2*65536, 65536)
		st.wantStructuredRead(3, 2*65536, make([]byte, 65536))
	})
}

// TestUnalignedRefusedOnDirectExport: an O_DIRECT export's minimum block
// size binds READ and WRITE even for a client that did not ask for block
// sizes: an unaligned request gets EINVAL before any of it is done, even
// when it would be streamed (so a READ's header never goes out ahead of a
// failure, and a WRITE never lands in part).
func TestUnalignedRefusedOnDirectExport(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		path := filepath.Join(t.TempDir(), "img")
		require.NoError(t, os.WriteFile(path, make([]byte, 1<<20), 0o600))
		f, err := backend.OpenFileDirect(path, false)
		if err != nil {
			testenv.SkipOutsideCI(t, "filesystem of %s lacks O_DIRECT: %v", path, err)
		}
		t.Cleanup(func() { f.Close() })
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "d", Backend: f}}})
		st.handshake("d") // GO without NBD_INFO_BLOCK_SIZE
		st.read(1, 0, 4096+100)
		st.wantReply(1, protocol.EINVAL)
		st.write(2, 0, pattern(4096+100, 9))
		st.wantReply(2, protocol.EINVAL)
		st.read(3, 0, 4096)
		st.wantRead(3, make([]byte, 4096))
	})
}
