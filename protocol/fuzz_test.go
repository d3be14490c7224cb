package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// fuzz fuzzes one fixed-size decoder, seeded with the golden table. The input is cut or zero-padded
// to the message size, so every input is a candidate header. The decoder must
// not panic, must fail exactly when the magic is wrong and then with
// ErrBadMagic, and otherwise re-encode to the same bytes.
func (c fixedCodec[T]) fuzz(f *testing.F) {
	for _, s := range c.golden {
		f.Add([]byte(s.wire))
	}
	f.Add([]byte(c.magic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b := make([]byte, c.size)
		copy(b, data)
		enc, err := c.roundTrip(b)
		if wantOK := bytes.HasPrefix(b, []byte(c.magic)); (err == nil) != wantOK {
			t.Fatalf("decode %x: got error %v; want an error iff the magic differs from %x", b, err, c.magic)
		}
		if err != nil {
			if !errors.Is(err, ErrBadMagic) {
				t.Fatalf("decode %x: got %v; want an error wrapping ErrBadMagic", b, err)
			}
			return
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("decode→encode:\ngot  %x\nwant %x", enc, b)
		}
	})
}

func FuzzDecodeRequest(f *testing.F)           { requestCodec.fuzz(f) }
func FuzzDecodeOptionHeader(f *testing.F)      { optionHeaderCodec.fuzz(f) }
func FuzzDecodeOptionReplyHeader(f *testing.F) { optionReplyHeaderCodec.fuzz(f) }
func FuzzDecodeSimpleReply(f *testing.F)       { simpleReplyCodec.fuzz(f) }
func FuzzDecodeChunkHeader(f *testing.F)       { chunkHeaderCodec.fuzz(f) }
func FuzzDecodeExtendedRequest(f *testing.F)   { extendedRequestCodec.fuzz(f) }
func FuzzDecodeExtendedChunkHeader(f *testing.F) {
	extendedChunkHeaderCodec.fuzz(f)
}

// FuzzModeDecodeRequest feeds any header to each mode: it must decode
// exactly the mode's own magic, refuse anything else with ErrBadMagic,
// re-encode to the same bytes, and give a payload length that the
// header's length field bounds.
func FuzzModeDecodeRequest(f *testing.F) {
	for _, s := range requestGolden {
		f.Add(byte(ModeStructured), []byte(s.wire))
	}
	for _, s := range extendedRequestGolden {
		f.Add(byte(ModeExtended), []byte(s.wire))
		f.Add(byte(ModeSimple), []byte(s.wire))
	}
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		m := Mode(mode % 3)
		b := make([]byte, m.RequestSize())
		copy(b, data)
		r, err := m.DecodeRequest(b)
		magic := RequestMagic
		if m == ModeExtended {
			magic = ExtendedRequestMagic
		}
		if wantOK := binary.BigEndian.Uint32(b) == magic; (err == nil) != wantOK {
			t.Fatalf("%v: decode %x: got %v; want an error iff the magic is not %#x", m, b, err, magic)
		}
		if err != nil {
			if !errors.Is(err, ErrBadMagic) {
				t.Fatalf("%v: decode %x: got %v; want ErrBadMagic", m, b, err)
			}
			return
		}
		enc := make([]byte, m.RequestSize())
		m.PutRequest(enc, r)
		if !bytes.Equal(enc, b) {
			t.Fatalf("%v: decode→encode:\ngot  %x\nwant %x", m, enc, b)
		}
		if p := m.PayloadLength(r); p != 0 && p != r.Length {
			t.Fatalf("%v: %+v: payload %d; want 0 or the length", m, r, p)
		}
	})
}

// FuzzDecodeBlockStatusExt: a status chunk decodes only as 8 + 16n bytes
// with a matching count and no empty extent, and then re-encodes the same.
func FuzzDecodeBlockStatusExt(f *testing.F) {
	f.Add(AppendBlockStatusExt(nil, capturedStatus))
	f.Add([]byte{})
	f.Add([]byte("\x00\x00\x00\x01\x00\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeBlockStatusExt(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedReply) {
				t.Fatalf("decode %x: got %v; want ErrMalformedReply", data, err)
			}
			return
		}
		if len(s.Descriptors) == 0 {
			t.Fatalf("decode %x: no descriptors and no error", data)
		}
		if enc := AppendBlockStatusExt(nil, s); !bytes.Equal(enc, data) {
			t.Fatalf("decode→encode:\ngot  %x\nwant %x", enc, data)
		}
	})
}

// FuzzDecodeBlockStatusPayload: a BLOCK_STATUS request payload decodes
// only with 1 to MaxBlockStatusIDs distinct IDs, and re-encodes the same.
func FuzzDecodeBlockStatusPayload(f *testing.F) {
	f.Add(AppendBlockStatusPayload(nil, BlockStatusPayload{1 << 40, []uint32{1}}))
	f.Add(AppendBlockStatusPayload(nil, BlockStatusPayload{4096, []uint32{1, 2, 1}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodeBlockStatusPayload(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedPayload) {
				t.Fatalf("decode %x: got %v; want ErrMalformedPayload", data, err)
			}
			return
		}
		if n := len(p.ContextIDs); n == 0 || n > MaxBlockStatusIDs {
			t.Fatalf("decode %x: %d IDs; want 1 to %d", data, n, MaxBlockStatusIDs)
		}
		if enc := AppendBlockStatusPayload(nil, p); !bytes.Equal(enc, data) {
			t.Fatalf("decode→encode:\ngot  %x\nwant %x", enc, data)
		}
	})
}

// fuzzOptionData seeds a fuzz target for an option-data decoder with the
// golden messages and their truncations.
func fuzzOptionData[T any](f *testing.F, seeds []golden[T]) {
	for _, s := range seeds {
		f.Add([]byte(s.wire))
		f.Add([]byte(s.wire[:len(s.wire)-1]))
		f.Add([]byte(s.wire + "\x00"))
	}
	f.Add([]byte{})
}

// checkMalformed fails t unless err is nil or wraps ErrMalformedOption (or
// ErrTooManyQueries); it reports whether err is nil.
func checkMalformed(t *testing.T, data []byte, err error) bool {
	t.Helper()
	if err != nil && !errors.Is(err, ErrMalformedOption) && !errors.Is(err, ErrTooManyQueries) {
		t.Fatalf("decode %x: got %v; want nil or an error wrapping ErrMalformedOption", data, err)
	}
	return err == nil
}

func FuzzDecodeExportRequest(f *testing.F) {
	fuzzOptionData(f, exportRequestGolden)
	// More information requests than MaxInfoRequests.
	f.Add([]byte("\x00\x00\x00\x00" + "\x00\x41" + strings.Repeat("\x00\x03", 0x41)))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeExportRequest(data)
		if !checkMalformed(t, data, err) {
			return
		}
		if len(req.Name) > MaxStringLen || len(req.Infos) > MaxInfoRequests {
			t.Fatalf("decode %x: name of %d bytes, %d infos; want at most %d, %d",
				data, len(req.Name), len(req.Infos), MaxStringLen, MaxInfoRequests)
		}
		// The declared count follows the name. Requests past the cap are
		// dropped, so the re-encoding is the input with the count lowered to
		// the cap and the rest cut off.
		at := 4 + len(req.Name)
		want := bytes.Clone(data)
		if n := binary.BigEndian.Uint16(data[at:]); n > MaxInfoRequests {
			binary.BigEndian.PutUint16(want[at:], MaxInfoRequests)
			want = want[:at+2+2*MaxInfoRequests]
		}
		if enc := AppendExportRequest(nil, req); !bytes.Equal(enc, want) {
			t.Fatalf("decode %x → encode:\ngot  %x\nwant %x", data, enc, want)
		}
	})
}

func FuzzDecodeMetaContextRequest(f *testing.F) {
	fuzzOptionData(f, metaContextRequestGolden)
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeMetaContextRequest(data)
		if !checkMalformed(t, data, err) {
			return
		}
		if len(req.Queries) > MaxMetaContextQueries {
			t.Fatalf("decode %x: got %d queries; want at most %d", data, len(req.Queries), MaxMetaContextQueries)
		}
		if enc := AppendMetaContextRequest(nil, req); !bytes.Equal(enc, data) {
			t.Fatalf("decode→encode:\ngot  %x\nwant %x", enc, data)
		}
	})
}
