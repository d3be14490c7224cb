package protocol

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestFrameSizes pins every fixed wire size to the layouts in proto.md, in the
// style of x/net/http2 TestFrameSizes.
func TestFrameSizes(t *testing.T) {
	tests := []struct {
		name      string
		got, want int
	}{
		{"HandshakeSize", HandshakeSize, 8 + 8 + 2},                     // NBDMAGIC, IHAVEOPT, handshake flags
		{"ClientFlagsSize", ClientFlagsSize, 4},                         // client flags
		{"OptionHeaderSize", OptionHeaderSize, 8 + 4 + 4},               // IHAVEOPT, option, length
		{"OptionReplyHeaderSize", OptionReplyHeaderSize, 8 + 4 + 4 + 4}, // magic, option, type, length
		{"ExportNameReplySize", ExportNameReplySize, 8 + 2},             // size, transmission flags
		{"ExportNamePadding", ExportNamePadding, 124},                   // "124 bytes, zeroes (reserved)"
		{"RequestSize", RequestSize, 4 + 2 + 2 + 8 + 8 + 4},             // magic, flags, type, cookie, offset, length
		{"SimpleReplySize", SimpleReplySize, 4 + 4 + 8},                 // magic, error, cookie
		{"ChunkHeaderSize", ChunkHeaderSize, 4 + 2 + 2 + 8 + 4},         // magic, flags, type, cookie, length
		{"OffsetDataHeaderSize", OffsetDataHeaderSize, 8},               // offset
		{"OffsetHoleSize", OffsetHoleSize, 8 + 4},                       // offset, hole size
		{"BlockDescriptorSize", BlockDescriptorSize, 4 + 4},             // length, status flags
		{"MaxStringLen", MaxStringLen, 4096},
		{"MaxErrorMessageLen", MaxErrorMessageLen, 4096},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d; want %d", tt.name, tt.got, tt.want)
		}
	}
	// The literal sizes the server is written against.
	if RequestSize != 28 || SimpleReplySize != 16 || OptionHeaderSize != 16 ||
		OptionReplyHeaderSize != 20 || ChunkHeaderSize != 20 || HandshakeSize != 18 {
		t.Errorf("fixed sizes changed: request %d, simple reply %d, option header %d, option reply header %d, chunk header %d, handshake %d; want 28, 16, 16, 20, 20, 18",
			RequestSize, SimpleReplySize, OptionHeaderSize, OptionReplyHeaderSize, ChunkHeaderSize, HandshakeSize)
	}
}

// fixedCodec adapts one fixed-size message type to its golden test and fuzz
// target.
type fixedCodec[T comparable] struct {
	size   int
	magic  string                  // the magic the message starts with, as wire bytes
	put    func(T) []byte          // encodes into a fresh size-byte buffer
	decode func([]byte) (T, error) // nil for messages the package only encodes
	golden []golden[T]             // hand-written encodings; also the fuzz seeds
}

// roundTrip decodes b and re-encodes the result.
func (c fixedCodec[T]) roundTrip(b []byte) ([]byte, error) {
	m, err := c.decode(b)
	if err != nil {
		return nil, err
	}
	return c.put(m), nil
}

// golden is one message and its hand-written encoding.
type golden[T any] struct {
	name string
	msg  T
	wire string
}

var handshakeCodec = fixedCodec[HandshakeFlag]{
	golden: handshakeGolden,
	size:   HandshakeSize,
	magic:  "NBDMAGIC",
	put:    func(f HandshakeFlag) []byte { var b [HandshakeSize]byte; PutHandshake(&b, f); return b[:] },
}

var optionHeaderCodec = fixedCodec[OptionHeader]{
	golden: optionHeaderGolden,
	size:   OptionHeaderSize,
	magic:  "IHAVEOPT",
	put:    func(h OptionHeader) []byte { var b [OptionHeaderSize]byte; h.Put(&b); return b[:] },
	decode: func(b []byte) (OptionHeader, error) { return DecodeOptionHeader((*[OptionHeaderSize]byte)(b)) },
}

var optionReplyHeaderCodec = fixedCodec[OptionReplyHeader]{
	golden: optionReplyHeaderGolden,
	size:   OptionReplyHeaderSize,
	magic:  "\x00\x03\xe8\x89\x04\x55\x65\xa9",
	put:    func(h OptionReplyHeader) []byte { var b [OptionReplyHeaderSize]byte; h.Put(&b); return b[:] },
	decode: func(b []byte) (OptionReplyHeader, error) {
		return DecodeOptionReplyHeader((*[OptionReplyHeaderSize]byte)(b))
	},
}

var requestCodec = fixedCodec[Request]{
	golden: requestGolden,
	size:   RequestSize,
	magic:  "\x25\x60\x95\x13",
	put:    func(r Request) []byte { var b [RequestSize]byte; r.Put(&b); return b[:] },
	decode: func(b []byte) (Request, error) { return DecodeRequest((*[RequestSize]byte)(b)) },
}

var simpleReplyCodec = fixedCodec[SimpleReply]{
	golden: simpleReplyGolden,
	size:   SimpleReplySize,
	magic:  "\x67\x44\x66\x98",
	put:    func(r SimpleReply) []byte { b := make([]byte, SimpleReplySize); r.Put(b); return b },
	decode: func(b []byte) (SimpleReply, error) { return DecodeSimpleReply((*[SimpleReplySize]byte)(b)) },
}

var chunkHeaderCodec = fixedCodec[ChunkHeader]{
	golden: chunkHeaderGolden,
	size:   ChunkHeaderSize,
	magic:  "\x66\x8e\x33\xef",
	put:    func(h ChunkHeader) []byte { b := make([]byte, ChunkHeaderSize); h.Put(b); return b },
	decode: func(b []byte) (ChunkHeader, error) { return DecodeChunkHeader((*[ChunkHeaderSize]byte)(b)) },
}

// exportNameReply holds PutExportNameReply's arguments.
type exportNameReply struct {
	size  uint64
	flags TransmissionFlag
}

var exportNameReplyCodec = fixedCodec[exportNameReply]{
	golden: exportNameReplyGolden,
	size:   ExportNameReplySize,
	put: func(r exportNameReply) []byte {
		var b [ExportNameReplySize]byte
		PutExportNameReply(&b, r.size, r.flags)
		return b[:]
	},
}

// Golden encodings, written byte by byte from proto.md; the fuzz targets
// use them as seeds.
var (
	handshakeGolden = []golden[HandshakeFlag]{
		{"nbdd greeting", FlagFixedNewstyle | FlagNoZeroes, "NBDMAGIC" + "IHAVEOPT" + "\x00\x03"},
		{"no flags", 0, "\x4e\x42\x44\x4d\x41\x47\x49\x43" + "\x49\x48\x41\x56\x45\x4f\x50\x54" + "\x00\x00"},
	}
	optionHeaderGolden = []golden[OptionHeader]{
		// qemu-img: GO for "" asking for NBD_INFO_BLOCK_SIZE: 4+0+2+2 bytes.
		{"GO default export", OptionHeader{OptGo, 8}, "IHAVEOPT" + "\x00\x00\x00\x07" + "\x00\x00\x00\x08"},
		// GO for "default" with no infos: 4+7+2 bytes.
		{"GO named export", OptionHeader{OptGo, 13}, "IHAVEOPT" + "\x00\x00\x00\x07" + "\x00\x00\x00\x0d"},
		{"STRUCTURED_REPLY", OptionHeader{OptStructuredReply, 0}, "IHAVEOPT" + "\x00\x00\x00\x08" + "\x00\x00\x00\x00"},
		{"LIST_META_CONTEXT base:", OptionHeader{OptListMetaContext, 17}, "IHAVEOPT" + "\x00\x00\x00\x09" + "\x00\x00\x00\x11"},
		{"EXPORT_NAME", OptionHeader{OptExportName, 4}, "IHAVEOPT" + "\x00\x00\x00\x01" + "\x00\x00\x00\x04"},
		{"ABORT", OptionHeader{OptAbort, 0}, "IHAVEOPT" + "\x00\x00\x00\x02" + "\x00\x00\x00\x00"},
		{"unknown option, max length", OptionHeader{Opt(0xffffffff), 0xffffffff}, "IHAVEOPT" + "\xff\xff\xff\xff" + "\xff\xff\xff\xff"},
	}
	optionReplyHeaderGolden = []golden[OptionReplyHeader]{
		{"ACK to GO", OptionReplyHeader{OptGo, RepAck, 0},
			"\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x07" + "\x00\x00\x00\x01" + "\x00\x00\x00\x00"},
		{"INFO_EXPORT to GO", OptionReplyHeader{OptGo, RepInfo, 12},
			"\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x07" + "\x00\x00\x00\x03" + "\x00\x00\x00\x0c"},
		{"ERR_UNSUP to STARTTLS", OptionReplyHeader{OptStartTLS, RepErrUnsup, 0},
			"\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x05" + "\x80\x00\x00\x01" + "\x00\x00\x00\x00"},
		{"ERR_UNKNOWN with message", OptionReplyHeader{OptGo, RepErrUnknown, 0x1000},
			"\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x07" + "\x80\x00\x00\x06" + "\x00\x00\x10\x00"},
	}
	requestGolden = []golden[Request]{
		{"READ 4 KiB at 0", Request{Type: CmdRead, Cookie: 1, Length: 4096},
			"\x25\x60\x95\x13" + "\x00\x00" + "\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x01" +
				"\x00\x00\x00\x00\x00\x00\x00\x00" + "\x00\x00\x10\x00"},
		{"WRITE FUA", Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 0x1_0000_0200, Length: 0x20000},
			"\x25\x60\x95\x13" + "\x00\x01" + "\x00\x01" + "\x01\x02\x03\x04\x05\x06\x07\x08" +
				"\x00\x00\x00\x01\x00\x00\x02\x00" + "\x00\x02\x00\x00"},
		{"DISC", Request{Type: CmdDisc, Cookie: 0xdeadbeefcafef00d},
			"\x25\x60\x95\x13" + "\x00\x00" + "\x00\x02" + "\xde\xad\xbe\xef\xca\xfe\xf0\x0d" +
				"\x00\x00\x00\x00\x00\x00\x00\x00" + "\x00\x00\x00\x00"},
		{"FLUSH", Request{Type: CmdFlush, Cookie: 2},
			"\x25\x60\x95\x13" + "\x00\x00" + "\x00\x03" + "\x00\x00\x00\x00\x00\x00\x00\x02" +
				"\x00\x00\x00\x00\x00\x00\x00\x00" + "\x00\x00\x00\x00"},
		{"WRITE_ZEROES NO_HOLE|FAST_ZERO", Request{Flags: CmdFlagNoHole | CmdFlagFastZero, Type: CmdWriteZeroes, Cookie: 3, Offset: 512, Length: 1 << 20},
			"\x25\x60\x95\x13" + "\x00\x12" + "\x00\x06" + "\x00\x00\x00\x00\x00\x00\x00\x03" +
				"\x00\x00\x00\x00\x00\x00\x02\x00" + "\x00\x10\x00\x00"},
		{"BLOCK_STATUS REQ_ONE", Request{Flags: CmdFlagReqOne, Type: CmdBlockStatus, Cookie: 4, Length: 0xffffffff},
			"\x25\x60\x95\x13" + "\x00\x08" + "\x00\x07" + "\x00\x00\x00\x00\x00\x00\x00\x04" +
				"\x00\x00\x00\x00\x00\x00\x00\x00" + "\xff\xff\xff\xff"},
		{"all ones", Request{Flags: 0xffff, Type: 0xffff, Cookie: ^uint64(0), Offset: ^uint64(0), Length: ^uint32(0)},
			"\x25\x60\x95\x13" + strings.Repeat("\xff", 24)},
	}
	simpleReplyGolden = []golden[SimpleReply]{
		{"success", SimpleReply{EOK, 1}, "\x67\x44\x66\x98" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x01"},
		{"EINVAL", SimpleReply{EINVAL, 0xdeadbeefcafef00d}, "\x67\x44\x66\x98" + "\x00\x00\x00\x16" + "\xde\xad\xbe\xef\xca\xfe\xf0\x0d"},
		{"ESHUTDOWN", SimpleReply{ESHUTDOWN, 0x0102030405060708}, "\x67\x44\x66\x98" + "\x00\x00\x00\x6c" + "\x01\x02\x03\x04\x05\x06\x07\x08"},
	}
	chunkHeaderGolden = []golden[ChunkHeader]{
		{"NONE DONE", ChunkHeader{ReplyFlagDone, ReplyTypeNone, 7, 0},
			"\x66\x8e\x33\xef" + "\x00\x01" + "\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x07" + "\x00\x00\x00\x00"},
		{"OFFSET_DATA 512 bytes", ChunkHeader{0, ReplyTypeOffsetData, 0x10, 8 + 512},
			"\x66\x8e\x33\xef" + "\x00\x00" + "\x00\x01" + "\x00\x00\x00\x00\x00\x00\x00\x10" + "\x00\x00\x02\x08"},
		{"OFFSET_HOLE", ChunkHeader{0, ReplyTypeOffsetHole, 0x11, 12},
			"\x66\x8e\x33\xef" + "\x00\x00" + "\x00\x02" + "\x00\x00\x00\x00\x00\x00\x00\x11" + "\x00\x00\x00\x0c"},
		{"BLOCK_STATUS DONE", ChunkHeader{ReplyFlagDone, ReplyTypeBlockStatus, 0x12, 4 + 8},
			"\x66\x8e\x33\xef" + "\x00\x01" + "\x00\x05" + "\x00\x00\x00\x00\x00\x00\x00\x12" + "\x00\x00\x00\x0c"},
		{"ERROR_OFFSET DONE", ChunkHeader{ReplyFlagDone, ReplyTypeErrorOffset, ^uint64(0), 14},
			"\x66\x8e\x33\xef" + "\x00\x01" + "\x80\x02" + "\xff\xff\xff\xff\xff\xff\xff\xff" + "\x00\x00\x00\x0e"},
	}
	exportNameReplyGolden = []golden[exportNameReply]{
		{"1 GiB read-write", exportNameReply{1 << 30, FlagHasFlags | FlagSendFlush | FlagSendFUA},
			"\x00\x00\x00\x00\x40\x00\x00\x00" + "\x00\x0d"},
		{"empty read-only", exportNameReply{0, FlagHasFlags | FlagReadOnly}, "\x00\x00\x00\x00\x00\x00\x00\x00" + "\x00\x03"},
		{"max size", exportNameReply{^uint64(0), 0xffff}, strings.Repeat("\xff", 10)},
	}
)

// readers are the short-read behaviours a decoder's caller must survive
// (G11: every decoder runs under iotest.OneByteReader and iotest.HalfReader).
var readers = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"Reader", func(r io.Reader) io.Reader { return r }},
	{"OneByteReader", iotest.OneByteReader},
	{"HalfReader", iotest.HalfReader},
	{"DataErrReader", iotest.DataErrReader},
}

// test checks each golden case: the encoding, the decoding of the golden
// bytes read through every reader in readers, a truncated stream, and
// ErrBadMagic for a corruption of each magic byte.
func (c fixedCodec[T]) test(t *testing.T) {
	for _, tt := range c.golden {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.wire) != c.size {
				t.Fatalf("golden wire is %d bytes; want %d", len(tt.wire), c.size)
			}
			if !strings.HasPrefix(tt.wire, c.magic) {
				t.Fatalf("golden wire %q does not start with magic %q", tt.wire, c.magic)
			}
			if got := string(c.put(tt.msg)); got != tt.wire {
				t.Errorf("encode %+v:\ngot  %q\nwant %q", tt.msg, got, tt.wire)
			}
			if c.decode == nil {
				return
			}
			for _, rd := range readers {
				buf := make([]byte, c.size)
				if _, err := io.ReadFull(rd.wrap(strings.NewReader(tt.wire)), buf); err != nil {
					t.Fatalf("%s: read: %v", rd.name, err)
				}
				got, err := c.decode(buf)
				if err != nil || got != tt.msg {
					t.Errorf("%s: decode: got %+v, %v; want %+v, nil", rd.name, got, err, tt.msg)
				}
			}
			short := make([]byte, c.size)
			r := iotest.OneByteReader(strings.NewReader(tt.wire[:c.size-1]))
			if _, err := io.ReadFull(r, short); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("read of %d of %d bytes: got %v; want io.ErrUnexpectedEOF", c.size-1, c.size, err)
			}
			for i := range len(c.magic) {
				bad := []byte(tt.wire)
				bad[i] ^= 0x20
				if got, err := c.decode(bad); !errors.Is(err, ErrBadMagic) {
					t.Errorf("decode with magic byte %d corrupted: got %+v, %v; want ErrBadMagic", i, got, err)
				}
			}
		})
	}
}

// TestFixedGolden runs the golden table of every fixed-size message.
func TestFixedGolden(t *testing.T) {
	tests := []struct {
		name string
		test func(*testing.T)
	}{
		{"Handshake", handshakeCodec.test},
		{"OptionHeader", optionHeaderCodec.test},
		{"OptionReplyHeader", optionReplyHeaderCodec.test},
		{"Request", requestCodec.test},
		{"SimpleReply", simpleReplyCodec.test},
		{"ChunkHeader", chunkHeaderCodec.test},
		{"ExportNameReply", exportNameReplyCodec.test},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.test)
	}
}

// TestBadMagic checks that a request in the old (pre-2.9) byte order, an
// extended-header request and a zeroed header are all refused, and that the
// error names the magic seen.
func TestBadMagic(t *testing.T) {
	tests := []struct {
		name, magic string
	}{
		{"historic NBD_REQUEST_MAGIC", "\x12\x56\x09\x53"},
		{"NBD_EXTENDED_REQUEST_MAGIC (not negotiated)", "\x21\xe4\x1c\x71"},
		{"zero", "\x00\x00\x00\x00"},
		{"simple reply magic", "\x67\x44\x66\x98"},
	}
	for _, tt := range tests {
		var b [RequestSize]byte
		copy(b[:], tt.magic)
		_, err := DecodeRequest(&b)
		if !errors.Is(err, ErrBadMagic) {
			t.Errorf("%s: got %v; want an error wrapping ErrBadMagic", tt.name, err)
			continue
		}
		if want := "nbd: bad magic"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: got %q; want prefix %q", tt.name, err, want)
		}
	}
}

// TestSlicePut checks the slice-taking encoders: they write exactly their
// size into a larger buffer and panic, before writing anything, on a short
// one.
func TestSlicePut(t *testing.T) {
	tests := []struct {
		name string
		size int
		put  func([]byte)
	}{
		{"SimpleReply", SimpleReplySize, SimpleReply{EIO, 9}.Put},
		{"ChunkHeader", ChunkHeaderSize, ChunkHeader{ReplyFlagDone, ReplyTypeNone, 9, 0}.Put},
		{"ExtendedChunkHeader", ExtendedChunkHeaderSize, ExtendedChunkHeader{ReplyFlagDone, ReplyTypeNone, 9, 4096, 0}.Put},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			long := bytes.Repeat([]byte{0xaa}, tt.size+8)
			tt.put(long)
			if tail := long[tt.size:]; !bytes.Equal(tail, bytes.Repeat([]byte{0xaa}, 8)) {
				t.Errorf("bytes after the message: got %x; want untouched aa", tail)
			}
			short := bytes.Repeat([]byte{0xaa}, tt.size-1)
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("Put into %d bytes: got no panic; want one", len(short))
					}
				}()
				tt.put(short)
			}()
			if !bytes.Equal(short, bytes.Repeat([]byte{0xaa}, tt.size-1)) {
				t.Errorf("Put into a short buffer wrote %x; want nothing written", short)
			}
		})
	}
}
