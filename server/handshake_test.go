package server

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// The handshake does not touch payload buffers, but it runs under every
// strategy anyway: the strategy decides what the connection sets up.

func TestGreetingGolden(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		var b [protocol.HandshakeSize]byte
		st.readFull(b[:])
		// NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES (proto.md "Newstyle negotiation").
		const want = "\x4e\x42\x44\x4d\x41\x47\x49\x43" + "\x49\x48\x41\x56\x45\x4f\x50\x54" + "\x00\x03"
		if string(b[:]) != want {
			t.Fatalf("greeting: got %x; want %x", b, want)
		}
	})
}

func TestUnknownClientFlagsClose(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.wantGreeting()
		st.sendClientFlags(protocol.ClientFixedNewstyle | 1<<7)
		st.wantClosed()
	})
}

func TestExportName(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		for _, noZeroes := range []bool{true, false} {
			st := newServerTester(t, strategy, nil)
			st.wantGreeting()
			flags := protocol.ClientFixedNewstyle
			if noZeroes {
				flags |= protocol.ClientNoZeroes
			}
			st.sendClientFlags(flags)
			st.exportName("mem") // checks the 124 zero bytes without NO_ZEROES
			require.Equal(t, uint64(1<<20), st.size, "size")
			require.NotZero(t, st.flags&protocol.FlagHasFlags, "HAS_FLAGS in %v", st.flags)
			// Transmission works, and nothing was left over from the padding.
			st.write(1, 10, []byte("hello"))
			st.wantReply(1, protocol.EOK)
			st.read(2, 10, 5)
			st.wantRead(2, []byte("hello"))
		}
	})
}

func TestExportNameUnknownCloses(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		st.sendOption(protocol.OptExportName, []byte("missing"))
		st.wantClosed()
	})
}

func TestExportNameTooLongCloses(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		st.sendOption(protocol.OptExportName, bytes.Repeat([]byte("a"), protocol.MaxStringLen+1))
		st.wantClosed()
	})
}

func TestGoInfos(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := &Server{
			MaxRequestSize: 1 << 20,
			Exports: []Export{
				{Name: "a", Description: "the first disk", Backend: backend.NewMemory(4096)},
				{Name: "b", Backend: backend.NewMemory(8192)},
			},
		}
		st := newServerTester(t, strategy, srv)
		st.start()
		// 0x7777 is no information type: it must be ignored.
		ei := st.info("a", protocol.InfoName, protocol.InfoDescription, protocol.InfoBlockSize, 0x7777)
		require.Equal(t, uint64(4096), ei.size)
		require.NotNil(t, ei.name, "NBD_INFO_NAME")
		require.Equal(t, "a", *ei.name)
		require.NotNil(t, ei.description, "NBD_INFO_DESCRIPTION")
		require.Equal(t, "the first disk", *ei.description)
		require.NotNil(t, ei.blockSize, "NBD_INFO_BLOCK_SIZE")
		require.Equal(t, protocol.BlockSize{Min: 1, Preferred: 4096, Max: 1 << 20}, *ei.blockSize)
		require.Equal(t, protocol.InfoExport, ei.infos[0], "first info")

		// GO on another export after INFO: b, not a.
		ei = st.goExport("b", protocol.InfoName)
		require.Equal(t, uint64(8192), ei.size)
		require.Equal(t, "b", *ei.name)
		want := protocol.FlagHasFlags | protocol.FlagSendFlush | protocol.FlagSendFUA | protocol.FlagSendTrim |
			protocol.FlagSendWriteZeroes | protocol.FlagSendCache | protocol.FlagCanMultiConn | protocol.FlagSendFastZero
		require.Equal(t, want, ei.flags, "flags of a memory export")
		st.read(1, 8000, 192)
		st.wantRead(1, make([]byte, 192))
	})
}

// TestInfoThenGoUnknown is go-nbd v0.3.2's bug (STYLE anti-pattern 10):
// the export selected by INFO must not leak into a GO for an unknown name.
func TestInfoThenGoUnknown(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := &Server{Exports: []Export{{Name: "a", Backend: backend.NewMemory(4096)}, {Name: "b", Backend: backend.NewMemory(4096)}}}
		st := newServerTester(t, strategy, srv)
		st.start()
		st.info("a")
		_, rep := st.infoOrGoErr(protocol.OptGo, "missing")
		require.Equal(t, protocol.RepErrUnknown, rep.typ, "GO missing after INFO a: %q", rep.data)
		// Still negotiating: a valid GO succeeds.
		st.goExport("b")
		st.read(1, 0, 1)
		st.wantRead(1, []byte{0})
	})
}

func TestDefaultExport(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		t.Run("one export", func(t *testing.T) {
			st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "only", Backend: backend.NewMemory(512)}}})
			st.start()
			ei := st.goExport("", protocol.InfoName)
			require.Equal(t, uint64(512), ei.size)
			require.Equal(t, "only", *ei.name)
		})
		t.Run("DefaultExport", func(t *testing.T) {
			srv := &Server{DefaultExport: "b", Exports: []Export{
				{Name: "a", Backend: backend.NewMemory(512)}, {Name: "b", Backend: backend.NewMemory(1024)},
			}}
			st := newServerTester(t, strategy, srv)
			st.start()
			require.Equal(t, uint64(1024), st.info("").size)
			st.exportName("")
			require.Equal(t, uint64(1024), st.size)
		})
		t.Run("several, no default", func(t *testing.T) {
			srv := &Server{Exports: []Export{{Name: "a", Backend: backend.NewMemory(512)}, {Name: "b", Backend: backend.NewMemory(1024)}}}
			st := newServerTester(t, strategy, srv)
			st.start()
			_, rep := st.infoOrGoErr(protocol.OptGo, "")
			require.Equal(t, protocol.RepErrUnknown, rep.typ)
		})
	})
}

func TestList(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := &Server{Exports: []Export{
			{Name: "a", Description: "first", Backend: backend.NewMemory(512)},
			{Name: "b", Backend: backend.NewMemory(512)},
			{Name: "c", Backend: backend.NewMemory(512)},
		}}
		st := newServerTester(t, strategy, srv)
		st.start()
		require.Equal(t, []string{"a", "b", "c"}, st.list())
		st.option(protocol.OptList, []byte("x"), protocol.RepErrInvalid)
		require.Equal(t, []string{"a", "b", "c"}, st.list(), "LIST after a rejected LIST")
		st.goExport("c")
	})
}

func TestUnknownOptionStaysInSync(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		for _, opt := range []protocol.Opt{protocol.OptPeekExport, 12345} {
			msg := st.option(opt, []byte("some payload the server must skip"), protocol.RepErrUnsup)
			require.NotEmpty(t, msg, "ERR_UNSUP message")
		}
		st.goExport("mem")
	})
}

func TestOptionTooBig(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		t.Run("drained", func(t *testing.T) {
			st := newServerTester(t, strategy, nil)
			st.start()
			data := make([]byte, protocol.MaxOptionLen+1)
			st.option(protocol.OptInfo, data, protocol.RepErrTooBig)
			st.goExport("mem")
		})
		t.Run("closed without reading", func(t *testing.T) {
			st := newServerTester(t, strategy, nil)
			st.start()
			var hdr [protocol.OptionHeaderSize]byte
			protocol.OptionHeader{Opt: protocol.OptGo, Length: maxDrainedOption + 1}.Put(&hdr)
			st.writeRaw(hdr[:])
			st.wantClosed()
			const want = protocol.ClientFlagsSize + protocol.OptionHeaderSize
			if got := st.sc.n.Load(); got != want {
				t.Fatalf("server read %d bytes; want %d (flags and the option header only)", got, want)
			}
		})
		t.Run("EXPORT_NAME closed without reading", func(t *testing.T) {
			st := newServerTester(t, strategy, nil)
			st.start()
			var hdr [protocol.OptionHeaderSize]byte
			protocol.OptionHeader{Opt: protocol.OptExportName, Length: 1 << 30}.Put(&hdr)
			st.writeRaw(hdr[:])
			st.wantClosed()
			if got, want := st.sc.n.Load(), int64(protocol.ClientFlagsSize+protocol.OptionHeaderSize); got != want {
				t.Fatalf("server read %d bytes; want %d", got, want)
			}
		})
	})
}

func TestExportNameTooLongInGo(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		long := strings.Repeat("x", protocol.MaxStringLen+1)
		_, rep := st.infoOrGoErr(protocol.OptGo, long)
		require.Equal(t, protocol.RepErrInvalid, rep.typ)
		_, rep = st.infoOrGoErr(protocol.OptInfo, long)
		require.Equal(t, protocol.RepErrInvalid, rep.typ)
		st.goExport("mem")
	})
}

func TestMalformedGo(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		for _, data := range [][]byte{
			nil,
			{0, 0, 0, 3, 'm', 'e', 'm'},                // no info count
			{0, 0, 0, 3, 'm', 'e', 'm', 0, 2, 0, 1},    // count says 2, one given
			{0, 0, 0, 9, 'm', 'e', 'm', 0, 0},          // name longer than the data
			{0, 0, 0, 3, 'm', 'e', 'm', 0, 0, 0, 0, 0}, // trailing byte
		} {
			st.option(protocol.OptGo, data, protocol.RepErrInvalid)
		}
		st.goExport("mem")
	})
}

func TestAbort(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		st.list()
		st.abort()
		st.wantServeResult(func(err error) bool { return err == nil }, "nil after ABORT")
	})
}

// TestTooManyOptions: a client that never leaves the handshake is cut off
// after 64 options, so it cannot hold the connection forever.
func TestTooManyOptions(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		for range maxOptions - 1 {
			st.option(12345, nil, protocol.RepErrUnsup)
		}
		// The 64th option may still be GO; anything else ends the handshake.
		st.option(12345, nil, protocol.RepErrUnsup)
		st.wantClosed()
	})
}

func TestStructuredReplyOption(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		st.option(protocol.OptStructuredReply, []byte{1}, protocol.RepErrInvalid)
		st.structuredReply()
		ei := st.goExport("mem")
		require.NotZero(t, ei.flags&protocol.FlagSendDF, "SEND_DF with structured replies: %v", ei.flags)
	})
}

// TestNoStructuredReplies: with Server.NoStructuredReplies the option is
// refused with NBD_REP_ERR_UNSUP, meta contexts stay unavailable, and a
// READ gets a simple reply.
func TestNoStructuredReplies(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, &Server{NoStructuredReplies: true})
		st.start()
		st.option(protocol.OptStructuredReply, nil, protocol.RepErrUnsup)
		st.option(protocol.OptSetMetaContext,
			protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: "mem", Queries: []string{"base:allocation"}}),
			protocol.RepErrInvalid)
		ei := st.goExport("mem")
		require.Zero(t, ei.flags&protocol.FlagSendDF, "SEND_DF without structured replies: %v", ei.flags)
		data := bytes.Repeat([]byte{0x5a}, 4096)
		st.write(1, 0, data)
		st.wantReply(1, protocol.EOK)
		st.read(2, 0, 4096)
		r := st.wantReply(2, protocol.EOK)
		require.False(t, r.structured, "READ reply without structured replies")
		require.Equal(t, data, r.data)
	})
}

func TestMetaContext(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		base := map[string]uint32{protocol.MetaContextBaseAllocation: baseAllocationID}
		// LIST's replies carry ID 0: "reserved and SHOULD be set to zero".
		listed := map[string]uint32{protocol.MetaContextBaseAllocation: 0}
		none := map[string]uint32{}

		// SET before STRUCTURED_REPLY is refused (proto.md "NBD_OPT_SET_META_CONTEXT").
		st.option(protocol.OptSetMetaContext,
			protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: "mem", Queries: []string{"base:allocation"}}),
			protocol.RepErrInvalid)

		// LIST works before structured replies.
		require.Equal(t, listed, st.listMeta("mem"), "LIST with no queries")
		require.Equal(t, listed, st.listMeta("mem", "base:"), "LIST base:")
		require.Equal(t, listed, st.listMeta("mem", "qemu:dirty-bitmap:x", "base:allocation"), "LIST with an unknown namespace")
		require.Equal(t, none, st.listMeta("mem", "qemu:dirty-bitmap:x"), "LIST of unknown namespaces only")
		st.option(protocol.OptListMetaContext, []byte{0, 0}, protocol.RepErrInvalid)
		_ = st.option(protocol.OptListMetaContext,
			protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: "missing"}), protocol.RepErrUnknown)

		st.structuredReply()
		require.Equal(t, none, st.setMeta("mem", "base:"), "SET base: (wildcards are for LIST)")
		require.Equal(t, none, st.setMeta("mem", "x-unknown:foo"), "SET unknown")
		require.Equal(t, base, st.setMeta("mem", "x-unknown:foo", "base:allocation"), "SET with an unknown namespace")
		st.goExport("mem")
		st.blockStatus(1, 0, 4096)
		require.Equal(t, []extent{{4096, protocol.StateHole | protocol.StateZero}}, st.wantBlockStatus(1))
	})
}

// TestSetMetaContextReset: a later SET replaces the selection, even when
// it selects nothing and even when it fails ("including when this command
// fails"), so BLOCK_STATUS is refused afterwards.
func TestSetMetaContextReset(t *testing.T) {
	for name, reset := range map[string]func(st *serverTester){
		"selects nothing": func(st *serverTester) { st.setMeta("mem") },
		"fails": func(st *serverTester) {
			st.option(protocol.OptSetMetaContext,
				protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: "missing", Queries: []string{"base:allocation"}}),
				protocol.RepErrUnknown)
		},
	} {
		t.Run(name, func(t *testing.T) {
			run(t, func(t *testing.T, strategy string) {
				st := newServerTester(t, strategy, nil)
				st.start()
				st.structuredReply()
				st.setMeta("mem", protocol.MetaContextBaseAllocation)
				reset(st)
				st.goExport("mem")
				st.blockStatus(1, 0, 512)
				st.wantStructuredError(1, protocol.EINVAL)
			})
		})
	}
}

// TestMetaContextOtherExport: contexts selected for one export do not
// carry over to another chosen with GO.
func TestMetaContextOtherExport(t *testing.T) {
	srv := func() *Server {
		return &Server{Exports: []Export{{Name: "a", Backend: backend.NewMemory(4096)}, {Name: "b", Backend: backend.NewMemory(4096)}}}
	}
	for _, tc := range []struct {
		set, selected string
		want          protocol.Errno
	}{
		{"a", "b", protocol.EINVAL},
		{"a", "a", protocol.EOK},
	} {
		st := newServerTester(t, "", srv())
		st.start()
		st.structuredReply()
		st.setMeta(tc.set, protocol.MetaContextBaseAllocation)
		st.goExport(tc.selected)
		st.blockStatus(1, 0, 512)
		if tc.want != protocol.EOK {
			st.wantStructuredError(1, tc.want)
			continue
		}
		require.Len(t, st.wantBlockStatus(1), 1, "SET on %q, GO %q", tc.set, tc.selected)
	}
}

// TestMetaContextTooManyQueries: more queries than nbdd takes is
// NBD_REP_ERR_TOO_BIG, not a malformed option.
func TestMetaContextTooManyQueries(t *testing.T) {
	st := newServerTester(t, "", nil)
	st.start()
	q := make([]string, protocol.MaxMetaContextQueries+1)
	for i := range q {
		q[i] = protocol.MetaContextBaseAllocation
	}
	st.option(protocol.OptListMetaContext,
		protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: "mem", Queries: q}),
		protocol.RepErrTooBig)
	st.goExport("mem")
}

// TestOptionErrorMessageBounded: an error message that quotes what the
// client sent stays a valid string of at most 4096 bytes.
func TestOptionErrorMessageBounded(t *testing.T) {
	st := newServerTester(t, "", nil)
	st.start()
	name := strings.Repeat("\xff", protocol.MaxStringLen) // %q makes each byte 4
	_, rep := st.infoOrGoErr(protocol.OptInfo, name)
	require.Equal(t, protocol.RepErrUnknown, rep.typ)
	require.LessOrEqual(t, len(rep.data), protocol.MaxStringLen)
	require.True(t, utf8.Valid(rep.data))
	st.goExport("mem")
}

// TestMaxPayloadNotBelowPreferred: the advertised maximum payload is never
// below the preferred block size, whatever MaxRequestSize asks.
func TestMaxPayloadNotBelowPreferred(t *testing.T) {
	st := newServerTester(t, "", &Server{MaxRequestSize: 1024})
	st.start()
	bs := st.info("mem", protocol.InfoBlockSize).blockSize
	require.NotNil(t, bs)
	require.GreaterOrEqual(t, bs.Max, bs.Preferred, "%+v", *bs)
}

func TestStartTLSWithoutConfig(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		st.option(protocol.OptStartTLS, nil, protocol.RepErrPolicy)
		st.goExport("mem")
	})
}

func TestTLSRequired(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		t.Run("options refused", func(t *testing.T) {
			st := newServerTester(t, strategy, &Server{TLSMode: TLSRequire})
			st.start()
			for _, opt := range []protocol.Opt{protocol.OptList, protocol.OptStructuredReply, protocol.OptInfo, protocol.OptGo, 999} {
				st.option(opt, nil, protocol.RepErrTLSReqd)
			}
			st.abort()
		})
		t.Run("EXPORT_NAME closes", func(t *testing.T) {
			st := newServerTester(t, strategy, &Server{TLSMode: TLSRequire})
			st.start()
			st.sendOption(protocol.OptExportName, []byte("mem"))
			st.wantClosed()
		})
	})
}

// TestHandshakeTimeout: a client that trickles bytes (slowloris) is cut
// off when the handshake deadline passes, however steadily it sends.
func TestHandshakeTimeout(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, &Server{HandshakeTimeout: 200 * time.Millisecond})
		st.start()
		var opt [protocol.OptionHeaderSize]byte
		protocol.OptionHeader{Opt: protocol.OptList, Length: 0}.Put(&opt)
		begin := time.Now()
		stop := make(chan struct{})
		trickled := make(chan struct{})
		go func() {
			defer close(trickled)
			for _, b := range bytes.Repeat(opt[:8], 100) { // never a whole option
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				if _, err := st.nc.Write([]byte{b}); err != nil {
					return
				}
			}
		}()
		st.wantClosed()
		close(stop)
		<-trickled
		if d := time.Since(begin); d > 2*time.Second {
			t.Fatalf("closed after %v; want about 200ms", d)
		}
	})
}

// TestOptionsDuringShutdown: once the server is shutting down, options
// get ERR_SHUTDOWN and EXPORT_NAME (which has no error reply) closes.
// The flag is set directly, so the test does not depend on Shutdown's
// grace period (TestShutdownClosesHandshakes goes through Shutdown).
func TestOptionsDuringShutdown(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.start()
		st.srv.inShutdown.Store(true)
		st.option(protocol.OptList, nil, protocol.RepErrShutdown)
		st.option(protocol.OptGo, protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: "mem"}), protocol.RepErrShutdown)
		st.sendOption(protocol.OptExportName, []byte("mem"))
		st.wantClosed()
	})
}

// TestClientFlagsZero: a client that sets no flag at all (plain
// newstyle) can still select an export with EXPORT_NAME, and gets the
// 124 bytes of padding.
func TestClientFlagsZero(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, nil)
		st.wantGreeting()
		st.sendClientFlags(0)
		st.exportName("mem")
		st.read(1, 0, 4)
		st.wantRead(1, make([]byte, 4))
	})
}

// optionBytes encodes an option for hand-built transcripts.
func optionBytes(opt protocol.Opt, data []byte) []byte {
	var hdr [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: opt, Length: uint32(len(data))}.Put(&hdr)
	return append(hdr[:], data...)
}

func clientFlagsBytes(f protocol.ClientFlag) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(f))
}

// TestDuplicateInfoAnsweredOnce: an information request sent twice
// ("SHOULD only appear once") is answered once.
func TestDuplicateInfoAnsweredOnce(t *testing.T) {
	st := newServerTester(t, "", nil)
	st.start()
	st.sendOption(protocol.OptInfo, protocol.AppendExportRequest(nil, protocol.ExportRequest{
		Name: "mem", Infos: []protocol.Info{protocol.InfoName, protocol.InfoName, protocol.InfoBlockSize}}))
	counts := map[protocol.Info]int{}
	for {
		r := st.readOptReply()
		if r.typ == protocol.RepAck {
			break
		}
		require.Equal(t, protocol.RepInfo, r.typ)
		counts[protocol.Info(binary.BigEndian.Uint16(r.data))]++
	}
	require.Equal(t, 1, counts[protocol.InfoName], "NBD_INFO_NAME replies")
	require.Equal(t, 1, counts[protocol.InfoBlockSize], "NBD_INFO_BLOCK_SIZE replies")
	st.goExport("mem")
}

// TestListMetaWithoutStructuredReplies: with structured replies refused,
// no context can be selected, so LIST offers none.
func TestListMetaWithoutStructuredReplies(t *testing.T) {
	st := newServerTester(t, "", &Server{NoStructuredReplies: true})
	st.start()
	require.Empty(t, st.listMeta("mem"))
	require.Empty(t, st.listMeta("mem", "base:"))
}

// badBlockSize reports a minimum block size the spec forbids.
type badBlockSize struct {
	*backend.Memory
	min uint32
}

func (b badBlockSize) MinBlockSize() uint32 { return b.min }

// TestBadMinBlockSizeRefused: a backend whose minimum block size is not a
// power of 2 up to 64 KiB is not advertised; selecting it fails cleanly.
func TestBadMinBlockSizeRefused(t *testing.T) {
	for _, min := range []uint32{3000, 128 << 10} {
		srv := &Server{Exports: []Export{{Name: "bad", Backend: badBlockSize{backend.NewMemory(1 << 20), min}}}}
		st := newServerTester(t, "", srv)
		st.start()
		_, rep := st.infoOrGoErr(protocol.OptGo, "bad")
		require.Equal(t, protocol.RepErrPlatform, rep.typ, "minimum block size %d", min)
	}
}
