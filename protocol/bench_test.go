package protocol

import "testing"

// The per-request hot path: decode a request header, encode its simple reply.
// Both must be allocation-free (G2).

func BenchmarkDecodeRequest(b *testing.B) {
	var hdr [RequestSize]byte
	Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 42, Offset: 1 << 20, Length: 128 << 10}.Put(&hdr)
	b.SetBytes(RequestSize)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRequest(&hdr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSimpleReplyPut(b *testing.B) {
	var out [SimpleReplySize]byte
	b.SetBytes(SimpleReplySize)
	b.ReportAllocs()
	for b.Loop() {
		SimpleReply{Error: EOK, Cookie: 42}.Put(out[:])
	}
}

// TestHotPathAllocs asserts what the benchmarks show: decoding a request and
// encoding its reply allocate nothing.
func TestHotPathAllocs(t *testing.T) {
	var hdr [RequestSize]byte
	Request{Type: CmdRead, Cookie: 7, Offset: 4096, Length: 4096}.Put(&hdr)
	var out [SimpleReplySize]byte
	allocs := testing.AllocsPerRun(1000, func() {
		req, err := DecodeRequest(&hdr)
		if err != nil {
			panic(err)
		}
		SimpleReply{Error: EOK, Cookie: req.Cookie}.Put(out[:])
	})
	if allocs != 0 {
		t.Errorf("DecodeRequest + SimpleReply.Put: got %v allocs/op; want 0", allocs)
	}
	if got := string(out[:]); got != "\x67\x44\x66\x98"+"\x00\x00\x00\x00"+"\x00\x00\x00\x00\x00\x00\x00\x07" {
		t.Errorf("reply: got %q; want the cookie 7 echoed", got)
	}
}
