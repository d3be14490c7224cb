package server

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// Tests of extended headers (proto.md "NBD_OPT_EXTENDED_HEADERS"): the
// negotiation rules, every command in the extended form over every data
// path, 64-bit effect lengths, payload rules and framing violations, and
// golden replies written from the spec's layouts.

// extendedCommands runs every command over c, which negotiated extended
// headers on an export of size bytes (at least 1 MiB, base:allocation
// selected), and checks each reply: always extended chunks, each
// carrying the request's offset.
func extendedCommands(t *testing.T, c *client, size uint64) {
	t.Helper()
	wantAt := func(r reply, off uint64, what string) {
		t.Helper()
		require.True(t, r.extended, "%s: extended chunks", what)
		require.Equal(t, off, r.offset, "%s: the offset every chunk header carries", what)
	}
	for i, n := range []int{512, 64 << 10, 256 << 10} {
		off := uint64(128 << 10)
		data := pattern(n, byte(i+1))
		c.write(1, off, data, protocol.CmdFlagFUA)
		r := c.wantReply(1, protocol.EOK)
		wantAt(r, off, "WRITE")
		require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeNone}, r.types, "WRITE: a NONE chunk, never a simple reply")
		c.read(2, off, uint32(n))
		wantAt(c.wantStructuredRead(2, off, data), off, "READ")
		c.read(3, off, uint32(n), protocol.CmdFlagDF)
		r = c.wantStructuredRead(3, off, data)
		wantAt(r, off, "READ DF")
		require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeOffsetData}, contentChunks(r.types), "READ DF: one data chunk")
	}
	c.flush(4)
	wantAt(c.wantReply(4, protocol.EOK), 0, "FLUSH")
	c.cache(5, 4096, 8192)
	wantAt(c.wantReply(5, protocol.EOK), 4096, "CACHE")
	c.zero(6, 128<<10, 4096)
	wantAt(c.wantReply(6, protocol.EOK), 128<<10, "WRITE_ZEROES")
	c.read(7, 128<<10, 4096)
	c.wantStructuredRead(7, 128<<10, make([]byte, 4096))
	c.trim(8, 128<<10, 256<<10)
	wantAt(c.wantReply(8, protocol.EOK), 128<<10, "TRIM")
	c.blockStatus(9, 512<<10, 512<<10)
	var sum uint64
	for _, e := range c.wantBlockStatus(9) {
		sum += e.length
	}
	require.Equal(t, uint64(512<<10), sum, "BLOCK_STATUS_EXT covers the range")
	// Errors are ERROR chunks: a simple reply is forbidden.
	c.read(10, size, 1)
	c.wantStructuredError(10, protocol.EINVAL)
	c.zero(11, size, 1)
	c.wantStructuredError(11, protocol.ENOSPC)
	c.flush(12)
	c.wantReply(12, protocol.EOK)
}

// TestExtendedCommands runs every command with extended headers under
// every strategy, over net.Pipe and over a unix socket, where READs are
// lent, streamed or sent with sendfile.
func TestExtendedCommands(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		t.Run("pipe", func(t *testing.T) {
			st := newServerTester(t, strategy, nil)
			st.handshakeExt("mem")
			require.NotZero(t, st.flags&protocol.FlagSendDF, "DF is advertised with extended headers")
			require.Zero(t, st.flags&protocol.FlagBlockStatusPayload, "no BLOCK_STATUS payload form")
			extendedCommands(t, st.client, 1<<20)
			st.disc()
			st.wantClosed()
		})
		f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
		require.NoError(t, err)
		require.NoError(t, f.Truncate(2<<20))
		file, err := backend.NewFile(f, false)
		require.NoError(t, err)
		srv := &Server{
			Exports: []Export{{Name: "mem", Backend: backend.NewMemory(1 << 20)}, {Name: "file", Backend: file}},
			Buffers: newFactory(t, strategy, (&Server{}).maxRequestSize(), bufferConfig{}),
			Logger:  testLogger(t),
		}
		sock, _ := serveUnix(t, srv)
		for _, e := range []struct {
			name string
			size uint64
		}{{"mem", 1 << 20}, {"file", 2 << 20}} {
			t.Run("socket/"+e.name, func(t *testing.T) {
				c := dialClient(t, sock)
				c.handshakeExt(e.name)
				extendedCommands(t, c, e.size)
			})
		}
	})
}

// TestExtendedHuge: with extended headers one request trims, zeroes,
// caches or asks the status of a whole 1 TiB export; a compact header
// would need 256 of each.
func TestExtendedHuge(t *testing.T) {
	const size = 1 << 40
	srv := &Server{Exports: []Export{{Name: "big", Backend: backend.NewMemory(size)}}}
	st := newServerTester(t, "pool", srv)
	st.handshakeExt("big")
	cmd := func(typ protocol.Cmd, cookie, off, n uint64) {
		st.sendExt(protocol.ExtendedRequest{Type: typ, Cookie: cookie, Offset: off, Length: n}, nil)
	}
	data := pattern(64<<10, 9)
	st.write(1, 1<<30, data)
	st.wantReply(1, protocol.EOK)
	hz := protocol.StateHole | protocol.StateZero
	cmd(protocol.CmdBlockStatus, 2, 0, size)
	require.Equal(t, []extent{{1 << 30, hz}, {64 << 10, 0}, {size - 1<<30 - 64<<10, hz}}, st.wantBlockStatus(2),
		"one BLOCK_STATUS for the whole export")
	cmd(protocol.CmdCache, 3, 0, size)
	st.wantReply(3, protocol.EOK)
	cmd(protocol.CmdWriteZeroes, 4, 0, 5<<30)
	st.wantReply(4, protocol.EOK)
	st.read(5, 1<<30, 64<<10)
	st.wantStructuredRead(5, 1<<30, make([]byte, 64<<10))
	st.write(6, 6<<30, data)
	st.wantReply(6, protocol.EOK)
	cmd(protocol.CmdTrim, 7, 0, size)
	st.wantReply(7, protocol.EOK)
	cmd(protocol.CmdBlockStatus, 8, 0, size)
	require.Equal(t, []extent{{size, hz}}, st.wantBlockStatus(8), "after one TRIM of 1 TiB")
	cmd(protocol.CmdTrim, 9, 1, size)
	st.wantStructuredError(9, protocol.EINVAL)
	cmd(protocol.CmdRead, 10, 0, 5<<30)
	st.wantStructuredError(10, protocol.EINVAL)
	es := exportStats(srv, "big")
	require.Equal(t, int64(2), es.Requests[protocol.CmdTrim], "TRIMs counted")
}

// TestExtendedPayloads: with extended headers a WRITE's length is its
// payload's, with NBD_CMD_FLAG_PAYLOAD_LEN or without it (as qemu 10
// sends it); on any other command the flag means a payload, which is
// read and dropped, then refused; the connection goes on either way.
func TestExtendedPayloads(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.handshakeExt("mem")
		ext := func(typ protocol.Cmd, flags protocol.CmdFlag, cookie, n uint64, payload []byte) {
			st.sendExt(protocol.ExtendedRequest{Type: typ, Flags: flags, Cookie: cookie, Length: n}, payload)
		}
		junk := bytes.Repeat([]byte{0x25, 0x60, 0x95, 0x13}, 1024) // request magics: misread as a header, it shows
		plain := pattern(4096, 7)
		ext(protocol.CmdWrite, 0, 1, uint64(len(plain)), plain)
		st.wantReply(1, protocol.EOK)
		ext(protocol.CmdFlush, protocol.CmdFlagPayloadLen, 2, uint64(len(junk)), junk)
		st.wantStructuredError(2, protocol.EINVAL)
		ext(protocol.CmdBlockStatus, protocol.CmdFlagPayloadLen, 3, 12, protocol.AppendBlockStatusPayload(nil,
			protocol.BlockStatusPayload{EffectLength: 4096, ContextIDs: []uint32{baseAllocationID}}))
		st.wantStructuredError(3, protocol.EINVAL)
		ext(99, protocol.CmdFlagPayloadLen, 4, uint64(len(junk)), junk)
		st.wantStructuredError(4, protocol.EINVAL)
		ext(protocol.CmdRead, protocol.CmdFlagPayloadLen, 5, 8, junk[:8])
		st.wantStructuredError(5, protocol.EINVAL)
		data := pattern(8192, 3)
		ext(protocol.CmdWrite, protocol.CmdFlagPayloadLen, 6, uint64(len(data)), data)
		st.wantReply(6, protocol.EOK)
		st.read(7, 0, 8192)
		st.wantStructuredRead(7, 0, data)
		st.read(8, 0, 4096)
		st.wantStructuredRead(8, 0, data[:4096])
		ext(protocol.CmdWrite, 0, 9, uint64(len(plain)), plain)
		st.wantReply(9, protocol.EOK)
		st.read(10, 0, 4096)
		st.wantStructuredRead(10, 0, plain)
		st.disc()
		st.wantClosed()
	})
}

// TestExtendedFraming: a header of the kind not negotiated, a payload too
// large to skip, and NBD_OPT_EXPORT_NAME after extended headers end the
// connection without a reply, before anything is read or allocated for
// them.
func TestExtendedFraming(t *testing.T) {
	compact := func(req protocol.Request) []byte {
		var b [protocol.RequestSize]byte
		req.Put(&b)
		return b[:]
	}
	extended := func(req protocol.ExtendedRequest) []byte {
		var b [protocol.ExtendedRequestSize]byte
		req.Put(&b)
		return b[:]
	}
	for _, tc := range []struct {
		name  string
		setup func(st *serverTester)
		send  []byte
	}{
		{"compact after extended", func(st *serverTester) { st.handshakeExt("mem") },
			compact(protocol.Request{Type: protocol.CmdFlush, Cookie: 1})},
		{"extended without negotiation", func(st *serverTester) { st.handshake("mem") },
			extended(protocol.ExtendedRequest{Type: protocol.CmdFlush, Cookie: 1})},
		{"extended under structured replies", func(st *serverTester) { st.handshakeSR("mem") },
			extended(protocol.ExtendedRequest{Type: protocol.CmdFlush, Cookie: 1})},
		{"payload of 1 TiB", func(st *serverTester) { st.handshakeExt("mem") },
			extended(protocol.ExtendedRequest{Type: protocol.CmdFlush, Flags: protocol.CmdFlagPayloadLen, Cookie: 1, Length: 1 << 40})},
		{"WRITE of 33 MiB", func(st *serverTester) { st.handshakeExt("mem") },
			extended(protocol.ExtendedRequest{Type: protocol.CmdWrite, Flags: protocol.CmdFlagPayloadLen, Cookie: 1, Length: 33 << 20})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newServerTester(t, "pool", nil)
			tc.setup(st)
			before := st.sc.n.Load()
			st.writeRaw(append(tc.send, make([]byte, 4096)...)[:len(tc.send)])
			st.wantClosed()
			require.LessOrEqual(t, st.sc.n.Load()-before, int64(len(tc.send)), "bytes read after the header")
		})
	}
	t.Run("EXPORT_NAME after extended headers", func(t *testing.T) {
		st := newServerTester(t, "pool", nil)
		st.start()
		st.extendedHeaders()
		st.sendOption(protocol.OptExportName, []byte("mem"))
		st.wantClosed()
	})
}

// TestExtendedNegotiation: the answers to NBD_OPT_STRUCTURED_REPLY and
// NBD_OPT_EXTENDED_HEADERS in every order, repeated, with data, or
// turned off, and the form of the transmission phase that follows.
func TestExtendedNegotiation(t *testing.T) {
	type opt struct {
		opt  protocol.Opt
		data []byte
		want protocol.Rep
	}
	sr := func(want protocol.Rep) opt { return opt{protocol.OptStructuredReply, nil, want} }
	ext := func(want protocol.Rep) opt { return opt{protocol.OptExtendedHeaders, nil, want} }
	for _, tc := range []struct {
		name  string
		off   bool // Server.NoStructuredReplies
		opts  []opt
		after protocol.Mode
	}{
		{"extended", false, []opt{ext(protocol.RepAck)}, protocol.ModeExtended},
		{"structured then extended", false, []opt{sr(protocol.RepAck), ext(protocol.RepAck)}, protocol.ModeExtended},
		{"extended then structured", false, []opt{ext(protocol.RepAck), sr(protocol.RepErrExtHeaderReqd)}, protocol.ModeExtended},
		{"structured twice", false, []opt{sr(protocol.RepAck), sr(protocol.RepErrInvalid)}, protocol.ModeStructured},
		{"extended twice", false, []opt{ext(protocol.RepAck), ext(protocol.RepErrInvalid)}, protocol.ModeExtended},
		{"extended with data", false, []opt{{protocol.OptExtendedHeaders, []byte{0}, protocol.RepErrInvalid}}, protocol.ModeSimple},
		{"structured with data", false, []opt{{protocol.OptStructuredReply, []byte{0}, protocol.RepErrInvalid}}, protocol.ModeSimple},
		{"turned off", true, []opt{ext(protocol.RepErrUnsup), sr(protocol.RepErrUnsup)}, protocol.ModeSimple},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newServerTester(t, "pool", &Server{NoStructuredReplies: tc.off})
			st.start()
			for _, o := range tc.opts {
				msg := st.option(o.opt, o.data, o.want)
				if o.want.IsError() {
					require.NotEmpty(t, msg, "%v: a message with %v", o.opt, o.want)
				}
			}
			st.goExport("mem")
			require.Equal(t, tc.after >= protocol.ModeStructured, st.flags&protocol.FlagSendDF != 0, "DF advertised")
			st.nbd.Structured, st.nbd.Extended = tc.after >= protocol.ModeStructured, tc.after == protocol.ModeExtended
			st.structured, st.extended = st.nbd.Structured, st.nbd.Extended
			st.read(1, 0, 512)
			r := st.wantReply(1, protocol.EOK)
			require.Equal(t, tc.after >= protocol.ModeStructured, r.structured, "READ in chunks")
		})
	}
	t.Run("STARTTLS forgets extended headers", func(t *testing.T) {
		st := newServerTester(t, "pool", tlsServer(TLSOn))
		st.start()
		st.extendedHeaders()
		st.startTLS()
		st.goExport("pub")
		st.read(1, 0, 512)
		r := st.wantReply(1, protocol.EOK)
		require.False(t, r.structured, "a simple reply after STARTTLS")
		st.disc()
		st.wantClosed()
	})
}

// TestExtendedGolden checks the bytes of extended replies against the
// layouts of proto.md ("Extended reply chunk message",
// "NBD_REPLY_TYPE_BLOCK_STATUS_EXT", "NBD_REPLY_TYPE_ERROR"), written out
// by hand rather than by package protocol's encoders.
func TestExtendedGolden(t *testing.T) {
	st := newServerTester(t, "pool", nil)
	st.handshakeExt("mem")
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		require.NoError(t, err)
		return b
	}
	want := func(what string, golden []byte) {
		t.Helper()
		got := make([]byte, len(golden))
		st.readFull(got)
		require.Equal(t, hex.EncodeToString(golden), hex.EncodeToString(got), what)
	}
	// magic 6e8a278c, flags, type, cookie, offset, length
	st.write(0x0102030405060708, 0x200, []byte{0xaa, 0xbb})
	want("WRITE: NONE chunk with DONE", h("6e8a278c"+"0001"+"0000"+"0102030405060708"+"0000000000000200"+"0000000000000000"))
	st.read(7, 0x200, 2)
	want("READ: OFFSET_DATA chunk", h("6e8a278c"+"0001"+"0001"+"0000000000000007"+"0000000000000200"+"000000000000000a"+
		"0000000000000200"+"aabb"))
	st.blockStatus(8, 0x10000, 0x1000)
	want("BLOCK_STATUS_EXT chunk", h("6e8a278c"+"0001"+"0006"+"0000000000000008"+"0000000000010000"+"0000000000000018"+
		"00000001"+"00000001"+"0000000000001000"+"0000000000000003"))
	st.flush(9)
	want("FLUSH: NONE chunk", h("6e8a278c"+"0001"+"0000"+"0000000000000009"+"0000000000000000"+"0000000000000000"))
	st.read(10, 1<<20, 1)
	hdr := make([]byte, protocol.ExtendedChunkHeaderSize+6)
	st.readFull(hdr)
	require.Equal(t, "6e8a278c"+"0001"+"8001"+"000000000000000a"+"0000000000100000", hex.EncodeToString(hdr[:24]), "ERROR chunk header")
	n := binary.BigEndian.Uint64(hdr[24:])
	require.Equal(t, "00000016", hex.EncodeToString(hdr[32:36]), "EINVAL")
	msgLen := binary.BigEndian.Uint16(hdr[36:])
	require.Equal(t, n, uint64(6+int(msgLen)), "the payload is the errno, the message length and the message")
	msg := make([]byte, msgLen)
	st.readFull(msg)
	require.Contains(t, string(msg), "past the end")
	st.nc.SetDeadline(time.Time{})
}
