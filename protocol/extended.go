package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the extended-header messages (proto.md, extension-ext-header
// branch: "Request message", "Extended reply chunk message",
// "NBD_REPLY_TYPE_BLOCK_STATUS_EXT", "NBD_CMD_BLOCK_STATUS").
const (
	// ExtendedRequestSize is an extended request: magic, flags, type,
	// cookie, offset and a 64-bit length.
	ExtendedRequestSize = 32
	// ExtendedChunkHeaderSize is an extended reply chunk header: magic,
	// flags, type, cookie, the request's offset and a 64-bit length.
	ExtendedChunkHeaderSize = 32
	// BlockStatusHeaderSize is the metadata context ID that opens an
	// NBD_REPLY_TYPE_BLOCK_STATUS payload.
	BlockStatusHeaderSize = 4
	// BlockStatusExtHeaderSize is the context ID and descriptor count that
	// open an NBD_REPLY_TYPE_BLOCK_STATUS_EXT payload.
	BlockStatusExtHeaderSize = 8
	// BlockDescriptorExtSize is one extent of a BLOCK_STATUS_EXT chunk:
	// a 64-bit length and 64-bit status flags.
	BlockDescriptorExtSize = 16
	// BlockStatusPayloadMinSize is the smallest payload of a BLOCK_STATUS
	// request with NBD_CMD_FLAG_PAYLOAD_LEN: the effect length and one
	// context ID.
	BlockStatusPayloadMinSize = 8 + 4
	// MaxBlockStatusIDs bounds the context IDs in one BLOCK_STATUS
	// payload. A server has far fewer contexts than this, so a longer list
	// repeats or invents IDs, which the spec answers with NBD_EINVAL anyway.
	MaxBlockStatusIDs = 1024
	// MaxExtentsPerChunk is the most descriptors a server should put in
	// one status chunk (proto.md "NBD_REPLY_TYPE_BLOCK_STATUS": "SHOULD
	// NOT send more than 2^20 extents in a single reply chunk").
	MaxExtentsPerChunk = 1 << 20
)

// ErrMalformedPayload means a request's payload does not match the
// structure its command documents. The payload was read in full, so the
// stream is in sync: the server answers NBD_EINVAL and keeps the
// connection (proto.md "NBD_CMD_BLOCK_STATUS": the server "MUST gracefully
// consume the client's payload before failing with NBD_EINVAL").
var ErrMalformedPayload = errors.New("nbd: malformed request payload")

// ExtendedRequest is a transmission request with a 64-bit length: the
// wire form once NBD_OPT_EXTENDED_HEADERS is negotiated, and the form
// Mode.DecodeRequest gives every request, compact ones widened.
//
// Length is a payload length when Flags has CmdFlagPayloadLen (that many
// bytes follow the header), and an effect length otherwise (the range of
// the export the command covers). Mode.PayloadLength applies that rule
// and the compact one.
type ExtendedRequest struct {
	Flags  CmdFlag
	Type   Cmd
	Cookie uint64
	Offset uint64
	Length uint64
}

// DecodeExtendedRequest parses b. It returns ErrBadMagic, a
// connection-fatal error, if the magic is not NBD_EXTENDED_REQUEST_MAGIC,
// a compact request's magic included: once extended headers are
// negotiated the client "MUST use the 32-byte extended request header"
// (proto.md "NBD_OPT_EXTENDED_HEADERS").
func DecodeExtendedRequest(b *[ExtendedRequestSize]byte) (ExtendedRequest, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != ExtendedRequestMagic {
		return ExtendedRequest{}, fmt.Errorf("%w: extended request magic %#x", ErrBadMagic, m)
	}
	return ExtendedRequest{
		Flags:  CmdFlag(binary.BigEndian.Uint16(b[4:])),
		Type:   Cmd(binary.BigEndian.Uint16(b[6:])),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint64(b[24:]),
	}, nil
}

// Put encodes r into b (used by clients and tests).
func (r ExtendedRequest) Put(b *[ExtendedRequestSize]byte) {
	binary.BigEndian.PutUint32(b[0:], ExtendedRequestMagic)
	binary.BigEndian.PutUint16(b[4:], uint16(r.Flags))
	binary.BigEndian.PutUint16(b[6:], uint16(r.Type))
	binary.BigEndian.PutUint64(b[8:], r.Cookie)
	binary.BigEndian.PutUint64(b[16:], r.Offset)
	binary.BigEndian.PutUint64(b[24:], r.Length)
}

// Extended returns r with its length widened to 64 bits. Flags are kept
// as sent, CmdFlagPayloadLen included, which a compact client must not
// set: Mode.PayloadLength still reads a compact WRITE's length as its
// payload and nothing else as one.
func (r Request) Extended() ExtendedRequest {
	return ExtendedRequest{Flags: r.Flags, Type: r.Type, Cookie: r.Cookie, Offset: r.Offset, Length: uint64(r.Length)}
}

// ExtendedChunkHeader is an extended reply chunk header (proto.md
// "Extended reply chunk message"); Length bytes of payload follow it.
// Offset MUST be the offset of the request answered, whatever the chunk
// (an OFFSET_DATA chunk carries its own offset in its payload too).
type ExtendedChunkHeader struct {
	Flags  ReplyFlag
	Type   ReplyType
	Cookie uint64
	Offset uint64
	Length uint64
}

// Put encodes h into b[:ExtendedChunkHeaderSize].
func (h ExtendedChunkHeader) Put(b []byte) {
	_ = b[ExtendedChunkHeaderSize-1]
	binary.BigEndian.PutUint32(b[0:], ExtendedReplyMagic)
	binary.BigEndian.PutUint16(b[4:], uint16(h.Flags))
	binary.BigEndian.PutUint16(b[6:], uint16(h.Type))
	binary.BigEndian.PutUint64(b[8:], h.Cookie)
	binary.BigEndian.PutUint64(b[16:], h.Offset)
	binary.BigEndian.PutUint64(b[24:], h.Length)
}

// DecodeExtendedChunkHeader parses b (used by clients and tests).
func DecodeExtendedChunkHeader(b *[ExtendedChunkHeaderSize]byte) (ExtendedChunkHeader, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != ExtendedReplyMagic {
		return ExtendedChunkHeader{}, fmt.Errorf("%w: extended reply magic %#x", ErrBadMagic, m)
	}
	return ExtendedChunkHeader{
		Flags:  ReplyFlag(binary.BigEndian.Uint16(b[4:])),
		Type:   ReplyType(binary.BigEndian.Uint16(b[6:])),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint64(b[24:]),
	}, nil
}

// BlockDescriptorExt is one extent of an NBD_REPLY_TYPE_BLOCK_STATUS_EXT
// chunk. For the contexts of the "base:" namespace the upper 32 bits of
// Status are zero.
type BlockDescriptorExt struct {
	Length uint64 // MUST be nonzero
	Status uint64
}

// AppendBlockDescriptorExt appends one extent of a BLOCK_STATUS_EXT chunk.
func AppendBlockDescriptorExt(b []byte, length, status uint64) []byte {
	b = binary.BigEndian.AppendUint64(b, length)
	return binary.BigEndian.AppendUint64(b, status)
}

// BlockStatusExt is the payload of an NBD_REPLY_TYPE_BLOCK_STATUS_EXT
// chunk: the metadata context and its extents, in order from the
// request's offset.
type BlockStatusExt struct {
	ContextID   uint32
	Descriptors []BlockDescriptorExt
}

// AppendBlockStatusExt appends the payload of a BLOCK_STATUS_EXT chunk.
func AppendBlockStatusExt(b []byte, s BlockStatusExt) []byte {
	b = binary.BigEndian.AppendUint32(b, s.ContextID)
	b = binary.BigEndian.AppendUint32(b, uint32(len(s.Descriptors)))
	for _, d := range s.Descriptors {
		b = AppendBlockDescriptorExt(b, d.Length, d.Status)
	}
	return b
}

// DecodeBlockStatusExt parses the payload of a BLOCK_STATUS_EXT chunk
// (used by clients and tests). The payload must be 8 + a positive
// multiple of 16 bytes, the count must match, and no extent may be empty;
// otherwise it returns ErrMalformedReply.
func DecodeBlockStatusExt(p []byte) (BlockStatusExt, error) {
	if len(p) < BlockStatusExtHeaderSize+BlockDescriptorExtSize || (len(p)-BlockStatusExtHeaderSize)%BlockDescriptorExtSize != 0 {
		return BlockStatusExt{}, fmt.Errorf("%w: BLOCK_STATUS_EXT payload of %d bytes", ErrMalformedReply, len(p))
	}
	n := (len(p) - BlockStatusExtHeaderSize) / BlockDescriptorExtSize
	if count := binary.BigEndian.Uint32(p[4:]); uint64(count) != uint64(n) {
		return BlockStatusExt{}, fmt.Errorf("%w: BLOCK_STATUS_EXT counts %d descriptors in %d bytes", ErrMalformedReply, count, len(p))
	}
	s := BlockStatusExt{ContextID: binary.BigEndian.Uint32(p), Descriptors: make([]BlockDescriptorExt, n)}
	for i := range s.Descriptors {
		d := p[BlockStatusExtHeaderSize+i*BlockDescriptorExtSize:]
		s.Descriptors[i] = BlockDescriptorExt{Length: binary.BigEndian.Uint64(d), Status: binary.BigEndian.Uint64(d[8:])}
		if s.Descriptors[i].Length == 0 {
			return BlockStatusExt{}, fmt.Errorf("%w: BLOCK_STATUS_EXT extent %d is empty", ErrMalformedReply, i)
		}
	}
	return s, nil
}

// BlockStatusPayload is the payload of NBD_CMD_BLOCK_STATUS sent with
// NBD_CMD_FLAG_PAYLOAD_LEN (proto.md "NBD_CMD_BLOCK_STATUS"): the effect
// length, which the header's length field then cannot carry, and the
// metadata contexts the client wants answers for.
type BlockStatusPayload struct {
	EffectLength uint64
	ContextIDs   []uint32
}

// DecodeBlockStatusPayload parses a BLOCK_STATUS request payload. It
// returns ErrMalformedPayload unless the payload is 8 + 4n bytes with
// 1 ≤ n ≤ MaxBlockStatusIDs and no ID repeated (the spec has the server
// fail duplicates with NBD_EINVAL; unknown IDs are the server's to find).
func DecodeBlockStatusPayload(p []byte) (BlockStatusPayload, error) {
	if len(p) < BlockStatusPayloadMinSize || (len(p)-8)%4 != 0 {
		return BlockStatusPayload{}, fmt.Errorf("%w: BLOCK_STATUS payload of %d bytes, want 8 + 4n with n > 0", ErrMalformedPayload, len(p))
	}
	n := (len(p) - 8) / 4
	if n > MaxBlockStatusIDs {
		return BlockStatusPayload{}, fmt.Errorf("%w: %d context IDs, at most %d", ErrMalformedPayload, n, MaxBlockStatusIDs)
	}
	bp := BlockStatusPayload{EffectLength: binary.BigEndian.Uint64(p), ContextIDs: make([]uint32, n)}
	seen := make(map[uint32]struct{}, n)
	for i := range bp.ContextIDs {
		id := binary.BigEndian.Uint32(p[8+4*i:])
		if _, dup := seen[id]; dup {
			return BlockStatusPayload{}, fmt.Errorf("%w: context ID %d repeated", ErrMalformedPayload, id)
		}
		seen[id] = struct{}{}
		bp.ContextIDs[i] = id
	}
	return bp, nil
}

// AppendBlockStatusPayload appends the encoding of p (used by clients
// and tests).
func AppendBlockStatusPayload(b []byte, p BlockStatusPayload) []byte {
	b = binary.BigEndian.AppendUint64(b, p.EffectLength)
	for _, id := range p.ContextIDs {
		b = binary.BigEndian.AppendUint32(b, id)
	}
	return b
}
