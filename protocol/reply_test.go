package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// Golden reply data, written from proto.md.
var (
	infoReplyGolden = []golden[InfoReply]{
		{name: "EXPORT", wire: "\x00\x00" + "\x00\x00\x00\x00\x40\x00\x00\x00" + "\x00\x05",
			msg: InfoReply{Type: InfoExport, Size: 1 << 30, Flags: FlagHasFlags | FlagSendFlush}},
		{name: "NAME", wire: "\x00\x01" + "disk", msg: InfoReply{Type: InfoName, Text: "disk"}},
		{name: "DESCRIPTION empty", wire: "\x00\x02", msg: InfoReply{Type: InfoDescription}},
		{name: "BLOCK_SIZE", wire: "\x00\x03" + "\x00\x00\x00\x01" + "\x00\x00\x10\x00" + "\x02\x00\x00\x00",
			msg: InfoReply{Type: InfoBlockSize, BlockSize: BlockSize{1, 4096, 32 << 20}}},
		{name: "unknown type, ignored", wire: "\x00\x63", msg: InfoReply{Type: 99}},
	}
	serverReplyGolden = []golden[ServerReply]{
		{name: "with description", wire: "\x00\x00\x00\x04" + "disk" + "scratch space", msg: ServerReply{"disk", "scratch space"}},
		{name: "default export", wire: "\x00\x00\x00\x00", msg: ServerReply{}},
	}
	metaContextReplyGolden = []golden[MetaContextReply]{
		{name: "base:allocation", wire: "\x00\x00\x00\x01" + "base:allocation", msg: MetaContextReply{1, "base:allocation"}},
	}
)

func TestDecodeReplies(t *testing.T) {
	for _, g := range infoReplyGolden {
		got, err := DecodeInfoReply([]byte(g.wire))
		if err != nil || got != g.msg {
			t.Errorf("DecodeInfoReply %s: got %+v, %v; want %+v", g.name, got, err, g.msg)
		}
		if enc := AppendInfoReply(nil, g.msg); string(enc) != g.wire {
			t.Errorf("AppendInfoReply %s: got %q; want %q", g.name, enc, g.wire)
		}
	}
	for _, g := range serverReplyGolden {
		got, err := DecodeServerReply([]byte(g.wire))
		if err != nil || got != g.msg {
			t.Errorf("DecodeServerReply %s: got %+v, %v; want %+v", g.name, got, err, g.msg)
		}
	}
	for _, g := range metaContextReplyGolden {
		got, err := DecodeMetaContextReply([]byte(g.wire))
		if err != nil || got != g.msg {
			t.Errorf("DecodeMetaContextReply %s: got %+v, %v; want %+v", g.name, got, err, g.msg)
		}
	}
	var b [ExportNameReplySize]byte
	PutExportNameReply(&b, 12345, FlagHasFlags|FlagReadOnly)
	if size, flags := DecodeExportNameReply(&b); size != 12345 || flags != FlagHasFlags|FlagReadOnly {
		t.Errorf("DecodeExportNameReply: got %d %v", size, flags)
	}
}

func TestDecodeMalformedReplies(t *testing.T) {
	long := "\x00\x01" + strings.Repeat("x", MaxStringLen+1)
	for name, data := range map[string]string{
		"INFO empty":           "",
		"INFO one byte":        "\x00",
		"INFO_EXPORT short":    "\x00\x00" + "\x00\x00\x00\x00\x40\x00\x00\x00" + "\x00",
		"INFO_EXPORT long":     "\x00\x00" + "\x00\x00\x00\x00\x40\x00\x00\x00" + "\x00\x05\x00",
		"INFO_BLOCK_SIZE 13":   "\x00\x03" + "\x00\x00\x00\x01" + "\x00\x00\x10\x00" + "\x02\x00\x00",
		"INFO_NAME too long":   long,
		"SERVER short length":  "\x00\x00\x00",
		"SERVER name past end": "\x00\x00\x00\x05disk",
	} {
		var err error
		if strings.HasPrefix(name, "SERVER") {
			_, err = DecodeServerReply([]byte(data))
		} else {
			_, err = DecodeInfoReply([]byte(data))
		}
		if !errors.Is(err, ErrMalformedReply) {
			t.Errorf("%s: got %v; want ErrMalformedReply", name, err)
		}
	}
	if _, err := DecodeMetaContextReply([]byte("\x00\x00\x01")); !errors.Is(err, ErrMalformedReply) {
		t.Errorf("META_CONTEXT short: got %v; want ErrMalformedReply", err)
	}
}

func TestDecodeChunkPayloads(t *testing.T) {
	e, err := DecodeErrorChunk(ReplyTypeErrorOffset, AppendErrorChunk(nil, ENOSPC, "full", true, 0x0102030405060708))
	if err != nil || e != (ErrorChunk{ENOSPC, "full", 0x0102030405060708}) {
		t.Errorf("ERROR_OFFSET: got %+v, %v", e, err)
	}
	e, err = DecodeErrorChunk(ReplyTypeError, []byte("\x00\x00\x00\x05"+"\x00\x04"+"boom"))
	if err != nil || e != (ErrorChunk{EIO, "boom", 0}) {
		t.Errorf("ERROR: got %+v, %v", e, err)
	}
	for _, bad := range []string{"\x00\x00\x00\x05\x00", "\x00\x00\x00\x05\x00\x05boom"} {
		if _, err := DecodeErrorChunk(ReplyTypeError, []byte(bad)); !errors.Is(err, ErrMalformedReply) {
			t.Errorf("ERROR %q: got %v; want ErrMalformedReply", bad, err)
		}
	}
	if _, err := DecodeErrorChunk(ReplyTypeErrorOffset, AppendErrorChunk(nil, EIO, "x", false, 0)); !errors.Is(err, ErrMalformedReply) {
		t.Errorf("ERROR_OFFSET without its offset: got %v; want ErrMalformedReply", err)
	}
	off, data, err := DecodeOffsetData([]byte("\x00\x00\x00\x00\x00\x00\x10\x00" + "abc"))
	if err != nil || off != 0x1000 || string(data) != "abc" {
		t.Errorf("OFFSET_DATA: got %d %q %v", off, data, err)
	}
	h, err := DecodeOffsetHole(AppendOffsetHole(nil, 0x1000, 0x200))
	if err != nil || h != (OffsetHole{0x1000, 0x200}) {
		t.Errorf("OFFSET_HOLE: got %+v, %v", h, err)
	}
	id, ext, err := DecodeBlockStatus(AppendBlockDescriptor(AppendBlockDescriptor([]byte("\x00\x00\x00\x01"), 4096, 3), 512, 0))
	if err != nil || id != 1 || len(ext) != 2 || ext[0] != (BlockDescriptor{4096, 3}) || ext[1] != (BlockDescriptor{512, 0}) {
		t.Errorf("BLOCK_STATUS: got %d %+v %v", id, ext, err)
	}
	for name, bad := range map[string]func() error{
		"OFFSET_DATA short":   func() error { _, _, err := DecodeOffsetData([]byte("\x00\x00")); return err },
		"OFFSET_HOLE long":    func() error { _, err := DecodeOffsetHole(make([]byte, 13)); return err },
		"BLOCK_STATUS ragged": func() error { _, _, err := DecodeBlockStatus(make([]byte, 9)); return err },
	} {
		if err := bad(); !errors.Is(err, ErrMalformedReply) {
			t.Errorf("%s: got %v; want ErrMalformedReply", name, err)
		}
	}
}

// checkMalformedReply fails t unless err is nil or wraps ErrMalformedReply;
// it reports whether err is nil.
func checkMalformedReply(t *testing.T, data []byte, err error) bool {
	t.Helper()
	if err != nil && !errors.Is(err, ErrMalformedReply) {
		t.Fatalf("decode %x: got %v; want nil or an error wrapping ErrMalformedReply", data, err)
	}
	return err == nil
}

// FuzzDecodeOptionReplyData runs every option reply data decoder on the
// same bytes: none may panic, and each either fails with
// ErrMalformedReply or decodes what encodes back to the input.
func FuzzDecodeOptionReplyData(f *testing.F) {
	fuzzOptionData(f, infoReplyGolden)
	fuzzOptionData(f, serverReplyGolden)
	fuzzOptionData(f, metaContextReplyGolden)
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := DecodeInfoReply(data); checkMalformedReply(t, data, err) {
			want := data
			switch r.Type {
			case InfoExport, InfoBlockSize, InfoName, InfoDescription:
			default: // only the type is kept
				want = data[:2]
			}
			if enc := AppendInfoReply(nil, r); !bytes.Equal(enc, want) {
				t.Fatalf("INFO %x → encode %x", data, enc)
			}
		}
		if r, err := DecodeServerReply(data); checkMalformedReply(t, data, err) && !bytes.Equal(AppendServer(nil, r.Name, r.Description), data) {
			t.Fatalf("SERVER %x → %+v does not encode back", data, r)
		}
		if r, err := DecodeMetaContextReply(data); checkMalformedReply(t, data, err) && !bytes.Equal(AppendMetaContext(nil, r.ID, r.Name), data) {
			t.Fatalf("META_CONTEXT %x → %+v does not encode back", data, r)
		}
	})
}

// FuzzDecodeChunkPayload runs every structured reply payload decoder on
// the same bytes: none may panic, and each either fails with
// ErrMalformedReply or decodes what encodes back to the input.
func FuzzDecodeChunkPayload(f *testing.F) {
	f.Add(AppendErrorChunk(nil, ENOSPC, "full", true, 7))
	f.Add(AppendErrorChunk(nil, EIO, "boom", false, 0))
	f.Add(AppendOffsetHole(nil, 0x1000, 0x200))
	f.Add(AppendBlockDescriptor([]byte("\x00\x00\x00\x01"), 4096, 3))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		if e, err := DecodeErrorChunk(ReplyTypeErrorOffset, p); checkMalformedReply(t, p, err) {
			if enc := AppendErrorChunk(nil, e.Errno, e.Message, true, e.Offset); !bytes.Equal(enc, p) && utf8.ValidString(e.Message) {
				t.Fatalf("ERROR_OFFSET %x → %x", p, enc)
			}
		}
		if _, err := DecodeErrorChunk(ReplyTypeError, p); checkMalformedReply(t, p, err) && len(p) < 6 {
			t.Fatalf("ERROR %x: decoded from fewer than 6 bytes", p)
		}
		if off, data, err := DecodeOffsetData(p); checkMalformedReply(t, p, err) && len(data)+OffsetDataHeaderSize != len(p) {
			t.Fatalf("OFFSET_DATA %x: offset %d, %d bytes of data", p, off, len(data))
		}
		if h, err := DecodeOffsetHole(p); checkMalformedReply(t, p, err) && !bytes.Equal(AppendOffsetHole(nil, h.Offset, h.Size), p) {
			t.Fatalf("OFFSET_HOLE %x → %+v", p, h)
		}
		if id, exts, err := DecodeBlockStatus(p); checkMalformedReply(t, p, err) {
			enc := []byte{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
			for _, e := range exts {
				enc = AppendBlockDescriptor(enc, e.Length, e.Flags)
			}
			if !bytes.Equal(enc, p) {
				t.Fatalf("BLOCK_STATUS %x → %x", p, enc)
			}
		}
	})
}
