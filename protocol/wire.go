package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the fixed-size wire messages.
const (
	// HandshakeSize is the server greeting: NBDMAGIC, IHAVEOPT and the
	// 16-bit handshake flags (proto.md "Newstyle negotiation").
	HandshakeSize = 18
	// ClientFlagsSize is the client's reply to the greeting.
	ClientFlagsSize = 4
	// OptionHeaderSize is IHAVEOPT, the option and its length.
	OptionHeaderSize = 16
	// OptionReplyHeaderSize is the reply magic, option, reply type and length.
	OptionReplyHeaderSize = 20
	// ExportNameReplySize is the size and flags after NBD_OPT_EXPORT_NAME,
	// without the optional 124 bytes of padding.
	ExportNameReplySize = 10
	// RequestSize is a compact request ("Request message").
	RequestSize = 28
	// SimpleReplySize is a simple reply header ("Simple reply message").
	SimpleReplySize = 16
	// ChunkHeaderSize is a structured reply chunk header
	// ("Structured reply chunk message").
	ChunkHeaderSize = 20
)

// Sentinel errors. Both are connection-fatal: after them the byte stream can
// no longer be trusted.
var (
	// ErrBadMagic means a handshake, option or request magic did not match.
	ErrBadMagic = errors.New("nbd: bad magic")
	// ErrShortMessage means a message was shorter than its fixed size.
	ErrShortMessage = errors.New("nbd: message too short")
)

// PutHandshake encodes the server greeting into b.
func PutHandshake(b *[HandshakeSize]byte, flags HandshakeFlag) {
	binary.BigEndian.PutUint64(b[0:], NBDMagic)
	binary.BigEndian.PutUint64(b[8:], IHaveOpt)
	binary.BigEndian.PutUint16(b[16:], uint16(flags))
}

// OptionHeader is the fixed part of a client option (proto.md "Option
// haggling"): IHAVEOPT, the option, and the length of the data that follows.
type OptionHeader struct {
	Opt    Opt
	Length uint32
}

// DecodeOptionHeader parses b. It returns ErrBadMagic if the magic is not
// IHAVEOPT.
func DecodeOptionHeader(b *[OptionHeaderSize]byte) (OptionHeader, error) {
	if m := binary.BigEndian.Uint64(b[0:]); m != IHaveOpt {
		return OptionHeader{}, fmt.Errorf("%w: option magic %#x", ErrBadMagic, m)
	}
	return OptionHeader{
		Opt:    Opt(binary.BigEndian.Uint32(b[8:])),
		Length: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// Put encodes h into b.
func (h OptionHeader) Put(b *[OptionHeaderSize]byte) {
	binary.BigEndian.PutUint64(b[0:], IHaveOpt)
	binary.BigEndian.PutUint32(b[8:], uint32(h.Opt))
	binary.BigEndian.PutUint32(b[12:], h.Length)
}

// OptionReplyHeader is the fixed part of an option reply.
type OptionReplyHeader struct {
	Opt    Opt
	Type   Rep
	Length uint32
}

// Put encodes h into b.
func (h OptionReplyHeader) Put(b *[OptionReplyHeaderSize]byte) {
	binary.BigEndian.PutUint64(b[0:], OptionReplyMagic)
	binary.BigEndian.PutUint32(b[8:], uint32(h.Opt))
	binary.BigEndian.PutUint32(b[12:], uint32(h.Type))
	binary.BigEndian.PutUint32(b[16:], h.Length)
}

// DecodeOptionReplyHeader parses b (used by clients and tests).
func DecodeOptionReplyHeader(b *[OptionReplyHeaderSize]byte) (OptionReplyHeader, error) {
	if m := binary.BigEndian.Uint64(b[0:]); m != OptionReplyMagic {
		return OptionReplyHeader{}, fmt.Errorf("%w: option reply magic %#x", ErrBadMagic, m)
	}
	return OptionReplyHeader{
		Opt:    Opt(binary.BigEndian.Uint32(b[8:])),
		Type:   Rep(binary.BigEndian.Uint32(b[12:])),
		Length: binary.BigEndian.Uint32(b[16:]),
	}, nil
}

// Request is a transmission request (proto.md "Request message").
type Request struct {
	Flags  CmdFlag
	Type   Cmd
	Cookie uint64
	Offset uint64
	Length uint32
}

// DecodeRequest parses b. It returns ErrBadMagic, a connection-fatal error,
// if the magic is wrong.
func DecodeRequest(b *[RequestSize]byte) (Request, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != RequestMagic {
		return Request{}, fmt.Errorf("%w: request magic %#x", ErrBadMagic, m)
	}
	return Request{
		Flags:  CmdFlag(binary.BigEndian.Uint16(b[4:])),
		Type:   Cmd(binary.BigEndian.Uint16(b[6:])),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// Put encodes r into b (used by clients and tests).
func (r Request) Put(b *[RequestSize]byte) {
	binary.BigEndian.PutUint32(b[0:], RequestMagic)
	binary.BigEndian.PutUint16(b[4:], uint16(r.Flags))
	binary.BigEndian.PutUint16(b[6:], uint16(r.Type))
	binary.BigEndian.PutUint64(b[8:], r.Cookie)
	binary.BigEndian.PutUint64(b[16:], r.Offset)
	binary.BigEndian.PutUint32(b[24:], r.Length)
}

// SimpleReply is a simple reply header; READ data follows it on success.
type SimpleReply struct {
	Error  Errno
	Cookie uint64
}

// Put encodes r into b[:SimpleReplySize].
func (r SimpleReply) Put(b []byte) {
	_ = b[SimpleReplySize-1] // early bounds check, as in encoding/binary
	binary.BigEndian.PutUint32(b[0:], SimpleReplyMagic)
	binary.BigEndian.PutUint32(b[4:], uint32(r.Error))
	binary.BigEndian.PutUint64(b[8:], r.Cookie)
}

// DecodeSimpleReply parses b (used by clients and tests).
func DecodeSimpleReply(b *[SimpleReplySize]byte) (SimpleReply, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != SimpleReplyMagic {
		return SimpleReply{}, fmt.Errorf("%w: simple reply magic %#x", ErrBadMagic, m)
	}
	return SimpleReply{
		Error:  Errno(binary.BigEndian.Uint32(b[4:])),
		Cookie: binary.BigEndian.Uint64(b[8:]),
	}, nil
}

// ChunkHeader is a structured reply chunk header; Length bytes of payload
// follow it.
type ChunkHeader struct {
	Flags  ReplyFlag
	Type   ReplyType
	Cookie uint64
	Length uint32
}

// Put encodes h into b[:ChunkHeaderSize].
func (h ChunkHeader) Put(b []byte) {
	_ = b[ChunkHeaderSize-1]
	binary.BigEndian.PutUint32(b[0:], StructuredReplyMagic)
	binary.BigEndian.PutUint16(b[4:], uint16(h.Flags))
	binary.BigEndian.PutUint16(b[6:], uint16(h.Type))
	binary.BigEndian.PutUint64(b[8:], h.Cookie)
	binary.BigEndian.PutUint32(b[16:], h.Length)
}

// DecodeChunkHeader parses b (used by clients and tests).
func DecodeChunkHeader(b *[ChunkHeaderSize]byte) (ChunkHeader, error) {
	if m := binary.BigEndian.Uint32(b[0:]); m != StructuredReplyMagic {
		return ChunkHeader{}, fmt.Errorf("%w: structured reply magic %#x", ErrBadMagic, m)
	}
	return ChunkHeader{
		Flags:  ReplyFlag(binary.BigEndian.Uint16(b[4:])),
		Type:   ReplyType(binary.BigEndian.Uint16(b[6:])),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Length: binary.BigEndian.Uint32(b[16:]),
	}, nil
}
