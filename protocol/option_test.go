package protocol

import (
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestAppenders checks every append-style encoder against bytes written from
// proto.md, both into an empty slice and after existing content.
func TestAppenders(t *testing.T) {
	long := strings.Repeat("x", 5000)
	// 4095 ASCII bytes then "é" (2 bytes): a byte cut at 4096 would split it.
	split := strings.Repeat("x", MaxErrorMessageLen-1) + "\u00e9"
	tests := []struct {
		name string
		enc  func([]byte) []byte
		wire string
	}{
		{"OptionReply ACK", func(b []byte) []byte { return AppendOptionReply(b, OptGo, RepAck, nil) },
			"\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x07" + "\x00\x00\x00\x01" + "\x00\x00\x00\x00"},
		{"OptionReply ERR_UNKNOWN message", func(b []byte) []byte {
			return AppendOptionReply(b, OptInfo, RepErrUnknown, []byte("no such export"))
		}, "\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x06" + "\x80\x00\x00\x06" + "\x00\x00\x00\x0e" + "no such export"},
		{"OptionReply INFO_EXPORT", func(b []byte) []byte {
			return AppendOptionReply(b, OptGo, RepInfo, AppendInfoExport(nil, 1<<30, FlagHasFlags|FlagSendFlush))
		}, "\x00\x03\xe8\x89\x04\x55\x65\xa9" + "\x00\x00\x00\x07" + "\x00\x00\x00\x03" + "\x00\x00\x00\x0c" +
			"\x00\x00" + "\x00\x00\x00\x00\x40\x00\x00\x00" + "\x00\x05"},
		// NBD_INFO_EXPORT: length MUST be 12.
		{"InfoExport", func(b []byte) []byte {
			return AppendInfoExport(b, 0x0102030405060708, FlagHasFlags|FlagReadOnly|FlagCanMultiConn)
		},
			"\x00\x00" + "\x01\x02\x03\x04\x05\x06\x07\x08" + "\x01\x03"},
		{"InfoString NAME", func(b []byte) []byte { return AppendInfoString(b, InfoName, "disk") }, "\x00\x01" + "disk"},
		{"InfoString DESCRIPTION empty", func(b []byte) []byte { return AppendInfoString(b, InfoDescription, "") }, "\x00\x02"},
		// NBD_INFO_BLOCK_SIZE: length MUST be 14.
		{"InfoBlockSize", func(b []byte) []byte { return AppendInfoBlockSize(b, BlockSize{1, 4096, DefaultMaxPayload}) },
			"\x00\x03" + "\x00\x00\x00\x01" + "\x00\x00\x10\x00" + "\x02\x00\x00\x00"},
		{"Server with description", func(b []byte) []byte { return AppendServer(b, "disk", "scratch space") },
			"\x00\x00\x00\x04" + "disk" + "scratch space"},
		{"Server default export", func(b []byte) []byte { return AppendServer(b, "", "") }, "\x00\x00\x00\x00"},
		{"MetaContext", func(b []byte) []byte { return AppendMetaContext(b, 1, MetaContextBaseAllocation) },
			"\x00\x00\x00\x01" + "base:allocation"},
		{"MetaContext max id", func(b []byte) []byte { return AppendMetaContext(b, 0xfffffffe, "x:y") }, "\xff\xff\xff\xfe" + "x:y"},
		// NBD_REPLY_TYPE_OFFSET_HOLE: length MUST be 12.
		{"OffsetHole", func(b []byte) []byte { return AppendOffsetHole(b, 0x1000, 0x200) },
			"\x00\x00\x00\x00\x00\x00\x10\x00" + "\x00\x00\x02\x00"},
		// NBD_REPLY_TYPE_ERROR: error, message length, message.
		{"ErrorChunk ERROR", func(b []byte) []byte { return AppendErrorChunk(b, EIO, "boom", false, 0xffff) },
			"\x00\x00\x00\x05" + "\x00\x04" + "boom"},
		{"ErrorChunk ERROR no message", func(b []byte) []byte { return AppendErrorChunk(b, EINVAL, "", false, 0) },
			"\x00\x00\x00\x16" + "\x00\x00"},
		// NBD_REPLY_TYPE_ERROR_OFFSET: error, message length, message, offset.
		{"ErrorChunk ERROR_OFFSET", func(b []byte) []byte { return AppendErrorChunk(b, ENOSPC, "full", true, 0x0102030405060708) },
			"\x00\x00\x00\x1c" + "\x00\x04" + "full" + "\x01\x02\x03\x04\x05\x06\x07\x08"},
		{"ErrorChunk ERROR_OFFSET no message", func(b []byte) []byte { return AppendErrorChunk(b, EPERM, "", true, 0) },
			"\x00\x00\x00\x01" + "\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x00"},
		{"ErrorChunk ERROR truncated", func(b []byte) []byte { return AppendErrorChunk(b, EIO, long, false, 0) },
			"\x00\x00\x00\x05" + "\x10\x00" + long[:4096]},
		{"ErrorChunk ERROR_OFFSET truncated", func(b []byte) []byte { return AppendErrorChunk(b, EIO, long, true, 512) },
			"\x00\x00\x00\x05" + "\x10\x00" + long[:4096] + "\x00\x00\x00\x00\x00\x00\x02\x00"},
		{"ErrorChunk exactly 4096", func(b []byte) []byte { return AppendErrorChunk(b, EIO, long[:4096], false, 0) },
			"\x00\x00\x00\x05" + "\x10\x00" + long[:4096]},
		{"ErrorChunk truncated at a UTF-8 boundary", func(b []byte) []byte { return AppendErrorChunk(b, EIO, split, true, 1) },
			"\x00\x00\x00\x05" + "\x0f\xff" + split[:4095] + "\x00\x00\x00\x00\x00\x00\x00\x01"},
		{"BlockDescriptor", func(b []byte) []byte { return AppendBlockDescriptor(b, 0x10000, StateHole|StateZero) },
			"\x00\x01\x00\x00" + "\x00\x00\x00\x03"},
		{"BlockDescriptor data", func(b []byte) []byte { return AppendBlockDescriptor(b, 0xfffffe00, 0) },
			"\xff\xff\xfe\x00" + "\x00\x00\x00\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.enc(nil)); got != tt.wire {
				t.Errorf("append to nil:\ngot  %q\nwant %q", got, tt.wire)
			}
			pre := make([]byte, 3, 4) // forces growth, so a stale alias would show
			copy(pre, "pre")
			if got := string(tt.enc(pre)); got != "pre"+tt.wire {
				t.Errorf("append after content:\ngot  %q\nwant %q", got, "pre"+tt.wire)
			}
		})
	}
}

// TestOptionReplyRoundTrip decodes the header AppendOptionReply writes and
// checks that its length covers exactly the data.
func TestOptionReplyRoundTrip(t *testing.T) {
	datas := [][]byte{nil, {}, []byte("x"), AppendInfoBlockSize(nil, BlockSize{512, 4096, 1 << 25})}
	for _, data := range datas {
		b := AppendOptionReply(nil, OptList, RepServer, data)
		h, err := DecodeOptionReplyHeader((*[OptionReplyHeaderSize]byte)(b))
		want := OptionReplyHeader{OptList, RepServer, uint32(len(data))}
		if err != nil || h != want {
			t.Errorf("header of reply with %d data bytes: got %+v, %v; want %+v, nil", len(data), h, err, want)
		}
		if got := b[OptionReplyHeaderSize:]; string(got) != string(data) {
			t.Errorf("data: got %q; want %q", got, data)
		}
	}
}

// Golden option data, as nbdinfo, qemu-img and qemu-nbd send it. The fuzz
// targets use them as seeds.
var (
	exportRequestGolden = []golden[ExportRequest]{
		// qemu-img: NBD_OPT_GO for the default export, asking for block sizes.
		{"GO default export, BLOCK_SIZE", ExportRequest{Infos: []Info{InfoBlockSize}},
			"\x00\x00\x00\x00" + "\x00\x01" + "\x00\x03"},
		{"GO default named, no infos", ExportRequest{Name: "default"},
			"\x00\x00\x00\x07" + "default" + "\x00\x00"},
		// nbdinfo (libnbd full info): NAME, DESCRIPTION and BLOCK_SIZE.
		{"INFO full info", ExportRequest{Name: "disk", Infos: []Info{InfoName, InfoDescription, InfoBlockSize}},
			"\x00\x00\x00\x04" + "disk" + "\x00\x03" + "\x00\x01\x00\x02\x00\x03"},
		{"unknown info kept", ExportRequest{Name: "a", Infos: []Info{0xffff, InfoExport}},
			"\x00\x00\x00\x01" + "a" + "\x00\x02" + "\xff\xff\x00\x00"},
		{"UTF-8 name", ExportRequest{Name: "d\u00efsk"}, "\x00\x00\x00\x05" + "d\xc3\xafsk" + "\x00\x00"},
		{"name of MaxStringLen bytes", ExportRequest{Name: strings.Repeat("n", MaxStringLen)},
			"\x00\x00\x10\x00" + strings.Repeat("n", MaxStringLen) + "\x00\x00"},
	}
	metaContextRequestGolden = []golden[MetaContextRequest]{
		// qemu-img/nbdinfo: LIST_META_CONTEXT for every context in "base:".
		{"LIST base:", MetaContextRequest{Queries: []string{"base:"}},
			"\x00\x00\x00\x00" + "\x00\x00\x00\x01" + "\x00\x00\x00\x05" + "base:"},
		{"SET base:allocation", MetaContextRequest{Name: "disk", Queries: []string{MetaContextBaseAllocation}},
			"\x00\x00\x00\x04" + "disk" + "\x00\x00\x00\x01" + "\x00\x00\x00\x0f" + "base:allocation"},
		{"LIST all, no queries", MetaContextRequest{Name: "disk"}, "\x00\x00\x00\x04" + "disk" + "\x00\x00\x00\x00"},
		{"two queries", MetaContextRequest{Queries: []string{MetaContextBaseAllocation, "qemu:dirty-bitmap:bm0"}},
			"\x00\x00\x00\x00" + "\x00\x00\x00\x02" + "\x00\x00\x00\x0f" + "base:allocation" +
				"\x00\x00\x00\x15" + "qemu:dirty-bitmap:bm0"},
		{"empty query", MetaContextRequest{Name: "x", Queries: []string{""}},
			"\x00\x00\x00\x01" + "x" + "\x00\x00\x00\x01" + "\x00\x00\x00\x00"},
	}
)

// optionDataCodec adapts one variable-length option decoder and its encoder.
type optionDataCodec[T any] struct {
	decode func([]byte) (T, error)
	append func([]byte, T) []byte
	equal  func(a, b T) bool
}

var exportRequestCodec = optionDataCodec[ExportRequest]{
	decode: DecodeExportRequest,
	append: AppendExportRequest,
	equal:  func(a, b ExportRequest) bool { return a.Name == b.Name && slices.Equal(a.Infos, b.Infos) },
}

var metaContextRequestCodec = optionDataCodec[MetaContextRequest]{
	decode: DecodeMetaContextRequest,
	append: AppendMetaContextRequest,
	equal:  func(a, b MetaContextRequest) bool { return a.Name == b.Name && slices.Equal(a.Queries, b.Queries) },
}

// testOptionData checks each golden case: the encoding, and the decoding of
// the whole option (header and data) read through every reader in readers.
func testOptionData[T any](t *testing.T, c optionDataCodec[T], opt Opt, tests []golden[T]) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(c.append(nil, tt.msg)); got != tt.wire {
				t.Errorf("encode %+v:\ngot  %q\nwant %q", tt.msg, got, tt.wire)
			}
			var hdr [OptionHeaderSize]byte
			OptionHeader{opt, uint32(len(tt.wire))}.Put(&hdr)
			stream := string(hdr[:]) + tt.wire
			for _, rd := range readers {
				r := rd.wrap(strings.NewReader(stream))
				got, err := readOption(r, c.decode)
				if err != nil || !c.equal(got, tt.msg) {
					t.Errorf("%s: decode: got %+v, %v; want %+v, nil", rd.name, got, err, tt.msg)
				}
			}
		})
	}
}

// readOption reads one option as a server does: the header, then exactly
// Length bytes of data, which it decodes.
func readOption[T any](r io.Reader, decode func([]byte) (T, error)) (T, error) {
	var zero T
	var hdr [OptionHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return zero, err
	}
	h, err := DecodeOptionHeader(&hdr)
	if err != nil {
		return zero, err
	}
	data := make([]byte, h.Length)
	if _, err := io.ReadFull(r, data); err != nil {
		return zero, err
	}
	return decode(data)
}

func TestExportRequestGolden(t *testing.T) {
	testOptionData(t, exportRequestCodec, OptGo, exportRequestGolden)
}

func TestMetaContextRequestGolden(t *testing.T) {
	testOptionData(t, metaContextRequestCodec, OptListMetaContext, metaContextRequestGolden)
}

// TestDecodeExportRequestCapsInfos checks that information requests beyond
// MaxInfoRequests are dropped, not allocated, while the option stays valid.
func TestDecodeExportRequestCapsInfos(t *testing.T) {
	data := "\x00\x00\x00\x00" + "\xff\xff" + strings.Repeat("\x00\x03", 0xffff)
	req, err := DecodeExportRequest([]byte(data))
	if err != nil {
		t.Fatalf("got %v; want nil", err)
	}
	if len(req.Infos) != MaxInfoRequests {
		t.Errorf("got %d infos; want %d", len(req.Infos), MaxInfoRequests)
	}
}

// malformed is one option body a decoder must refuse with ErrMalformedOption.
type malformed struct {
	name, data string
}

// testMalformed checks that decode refuses each case with an error wrapping
// ErrMalformedOption and does not panic.
func testMalformed[T any](t *testing.T, decode func([]byte) (T, error), tests []malformed) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decode([]byte(tt.data))
			if !errors.Is(err, ErrMalformedOption) {
				t.Errorf("decode %q: got %+v, %v; want an error wrapping ErrMalformedOption", tt.data, got, err)
			}
		})
	}
}

// be32 is the big-endian encoding of n, for building malformed options.
func be32(n uint32) string { return string(binary.BigEndian.AppendUint32(nil, n)) }

func TestDecodeExportRequestMalformed(t *testing.T) {
	testMalformed(t, DecodeExportRequest, []malformed{
		{"empty", ""},
		{"short name length", "\x00\x00\x00"},
		{"name truncated", "\x00\x00\x00\x05" + "abc"},
		{"name length beyond data", "\x00\x00\x00\x0a" + "default" + "\x00\x00"},
		{"name swallows the count", "\x00\x00\x00\x09" + "default" + "\x00\x00"},
		{"name length MaxStringLen+1", be32(MaxStringLen+1) + strings.Repeat("n", MaxStringLen+1) + "\x00\x00"},
		{"name length 2^32-1", "\xff\xff\xff\xff" + "abc"},
		{"missing info count", "\x00\x00\x00\x01" + "a"},
		{"short info count", "\x00\x00\x00\x01" + "a" + "\x00"},
		{"count 2, one info", "\x00\x00\x00\x00" + "\x00\x02" + "\x00\x03"},
		{"count 1, no infos", "\x00\x00\x00\x00" + "\x00\x01"},
		{"count 1, odd trailing byte", "\x00\x00\x00\x00" + "\x00\x01" + "\x00\x03\x00"},
		{"count 0, trailing bytes", "\x00\x00\x00\x00" + "\x00\x00" + "\x00\x03"},
		{"count 0xffff, few infos", "\x00\x00\x00\x00" + "\xff\xff" + "\x00\x03"},
	})
}

func TestDecodeMetaContextRequestMalformed(t *testing.T) {
	queries := func(n int) string { return strings.Repeat("\x00\x00\x00\x05base:", n) }
	testMalformed(t, DecodeMetaContextRequest, []malformed{
		{"empty", ""},
		{"short name length", "\x00\x00"},
		{"name truncated", "\x00\x00\x00\x04" + "dis"},
		{"name length MaxStringLen+1", be32(MaxStringLen+1) + strings.Repeat("n", MaxStringLen+1) + "\x00\x00\x00\x00"},
		{"name length 2^32-1", "\xff\xff\xff\xff"},
		{"missing query count", "\x00\x00\x00\x00"},
		{"short query count", "\x00\x00\x00\x00" + "\x00\x00\x00"},
		{"count 1, no query", "\x00\x00\x00\x00" + "\x00\x00\x00\x01"},
		{"count 1, short query length", "\x00\x00\x00\x00" + "\x00\x00\x00\x01" + "\x00\x00"},
		{"count 1, query truncated", "\x00\x00\x00\x00" + "\x00\x00\x00\x01" + "\x00\x00\x00\x0f" + "base:"},
		{"count 2, one query", "\x00\x00\x00\x00" + "\x00\x00\x00\x02" + queries(1)},
		{"query length MaxStringLen+1", "\x00\x00\x00\x00" + "\x00\x00\x00\x01" + be32(MaxStringLen+1) + strings.Repeat("q", MaxStringLen+1)},
		{"query length 2^32-1", "\x00\x00\x00\x00" + "\x00\x00\x00\x01" + "\xff\xff\xff\xff"},
		{"count 0, trailing bytes", "\x00\x00\x00\x00" + "\x00\x00\x00\x00" + "x"},
		{"count 1, trailing bytes", "\x00\x00\x00\x00" + "\x00\x00\x00\x01" + queries(1) + "\x00"},
		{"count 1, two queries", "\x00\x00\x00\x00" + "\x00\x00\x00\x01" + queries(2)},
	})
}

// TestDecodeMetaContextRequestTooMany: more than MaxMetaContextQueries is
// refused before anything is allocated for them, with ErrTooManyQueries
// (NBD_REP_ERR_TOO_BIG), not as malformed data.
func TestDecodeMetaContextRequestTooMany(t *testing.T) {
	queries := func(n int) string { return strings.Repeat("\x00\x00\x00\x05base:", n) }
	for _, data := range []string{
		"\x00\x00\x00\x00" + be32(MaxMetaContextQueries+1) + queries(MaxMetaContextQueries+1),
		"\x00\x00\x00\x00" + "\xff\xff\xff\xff" + queries(1),
	} {
		if _, err := DecodeMetaContextRequest([]byte(data)); !errors.Is(err, ErrTooManyQueries) {
			t.Errorf("decode %d bytes: got %v; want ErrTooManyQueries", len(data), err)
		}
	}
}

// TestDecodeMetaContextRequestMaxQueries checks the boundary the malformed
// table checks from the other side: exactly MaxMetaContextQueries is valid.
func TestDecodeMetaContextRequestMaxQueries(t *testing.T) {
	want := MetaContextRequest{Name: "disk", Queries: slices.Repeat([]string{"base:"}, MaxMetaContextQueries)}
	got, err := DecodeMetaContextRequest(AppendMetaContextRequest(nil, want))
	if err != nil || !metaContextRequestCodec.equal(got, want) {
		t.Errorf("got %d queries, %v; want %d, nil", len(got.Queries), err, MaxMetaContextQueries)
	}
}

// TestMessage: messages on the wire are valid UTF-8 of at most the given
// length, cut between characters.
func TestMessage(t *testing.T) {
	tests := []struct {
		name, in string
		max      int
		want     string
	}{
		{"short", "unknown export", 4096, "unknown export"},
		{"cut", "abcdef", 4, "abcd"},
		{"cut before a 2-byte character", "abcé", 4, "abc"},
		{"cut before a 4-byte character", "a😀", 4, "a"},
		{"invalid bytes replaced", "a\xffb", 4096, "a\uFFFDb"},
		{"replaced, then cut", "\xff\xffxy", 4, "\uFFFDx"},
		{"empty", "", 0, ""},
	}
	for _, tt := range tests {
		got := Message(tt.in, tt.max)
		if got != tt.want || len(got) > tt.max || !utf8.ValidString(got) {
			t.Errorf("%s: Message(%q, %d) = %q; want %q", tt.name, tt.in, tt.max, got, tt.want)
		}
	}
}
