package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Mode is the form of the transmission-phase messages that the handshake
// agreed on (proto.md "Transmission"): which request header the client
// sends, and which replies the server may send. Modes are ordered: every
// mode from ModeStructured on replies with chunks.
//
// The server keeps one Mode per connection and asks it, rather than
// testing flags of its own, how big a request header is, how to decode
// it, how much payload follows it, and how to encode a reply, so that
// the rules of each form live here, once.
type Mode uint8

// Modes.
const (
	// ModeSimple: neither NBD_OPT_STRUCTURED_REPLY nor
	// NBD_OPT_EXTENDED_HEADERS; compact requests and simple replies only.
	ModeSimple Mode = iota
	// ModeStructured: NBD_OPT_STRUCTURED_REPLY; compact requests,
	// structured reply chunks, and simple replies to requests that
	// answer with no payload.
	ModeStructured
	// ModeExtended: NBD_OPT_EXTENDED_HEADERS; 32-byte requests with 64-bit
	// lengths, and 32-byte reply chunks for every reply ("the server MUST
	// NOT use simple replies even when there is no payload").
	ModeExtended
)

var modeNames = []string{"simple", "structured", "extended"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// RequestSize is the size of a request header in mode m.
func (m Mode) RequestSize() int {
	if m == ModeExtended {
		return ExtendedRequestSize
	}
	return RequestSize
}

// RequestMagic is the magic that opens a request header in mode m.
func (m Mode) RequestMagic() uint32 {
	if m == ModeExtended {
		return ExtendedRequestMagic
	}
	return RequestMagic
}

// ChunkHeaderSize is the size of a reply chunk header in mode m, and 0 in
// ModeSimple, which has no chunks.
func (m Mode) ChunkHeaderSize() int {
	switch m {
	case ModeStructured:
		return ChunkHeaderSize
	case ModeExtended:
		return ExtendedChunkHeaderSize
	}
	return 0
}

// DecodeRequest parses the request header b, m.RequestSize() bytes, into
// the 64-bit form. A header of the other form is a violation that the
// server answers with a hard disconnect, as it does any wrong magic: it
// returns ErrBadMagic, naming which mix it saw (proto.md
// "NBD_OPT_EXTENDED_HEADERS": the client "MUST use the 32-byte extended
// request header"; "Request message": the compact request is sent "when
// extended transactions are not in use").
func (m Mode) DecodeRequest(b []byte) (ExtendedRequest, error) {
	_ = b[m.RequestSize()-1]
	magic := binary.BigEndian.Uint32(b)
	if m == ModeExtended {
		if magic == RequestMagic {
			return ExtendedRequest{}, fmt.Errorf("%w: compact request after NBD_OPT_EXTENDED_HEADERS", ErrBadMagic)
		}
		return DecodeExtendedRequest((*[ExtendedRequestSize]byte)(b))
	}
	if magic == ExtendedRequestMagic {
		return ExtendedRequest{}, fmt.Errorf("%w: extended request without NBD_OPT_EXTENDED_HEADERS", ErrBadMagic)
	}
	r, err := DecodeRequest((*[RequestSize]byte)(b))
	return r.Extended(), err
}

// PutRequest encodes r as a request header of mode m into
// b[:m.RequestSize()] (used by clients and tests). Outside ModeExtended
// the length must fit in 32 bits.
func (m Mode) PutRequest(b []byte, r ExtendedRequest) {
	if m == ModeExtended {
		r.Put((*[ExtendedRequestSize]byte)(b))
		return
	}
	if r.Length > math.MaxUint32 {
		panic(fmt.Sprintf("protocol: %v of %d bytes in a compact request", r.Type, r.Length))
	}
	Request{Flags: r.Flags, Type: r.Type, Cookie: r.Cookie, Offset: r.Offset, Length: uint32(r.Length)}.Put((*[RequestSize]byte)(b))
}

// PayloadLength is the number of bytes that follow r's header on the wire
// in mode m. With extended headers that is r.Length for NBD_CMD_WRITE,
// and for any other command that has CmdFlagPayloadLen, and nothing
// otherwise; a server consumes such a payload even for a command that
// takes none, then answers NBD_EINVAL ("Request message": "a server
// SHOULD gracefully consume length bytes of payload ... and proceed with
// the next client command"). The spec has a WRITE carry the flag, but
// qemu 10's client sends its WRITEs without it (as the draft it was
// written to did), and qemu-nbd reads their payloads all the same: a
// WRITE always has one. In the compact forms only NBD_CMD_WRITE carries
// a payload, of r.Length bytes; CmdFlagPayloadLen there is an invalid
// flag, not a payload.
//
// A payload beyond the server's maximum is a violation the server answers
// with a hard disconnect (extended "Request message"); the caller checks
// that before reading, as for a compact WRITE.
func (m Mode) PayloadLength(r ExtendedRequest) uint64 {
	if r.Type == CmdWrite || m == ModeExtended && r.Flags&CmdFlagPayloadLen != 0 {
		return r.Length
	}
	return 0
}

// EffectLength is the length of the export that r covers when it carries
// no payload that says otherwise: r.Length, except for a WRITE, whose
// effect is its payload, and for a request whose payload holds its effect
// length (NBD_CMD_BLOCK_STATUS with CmdFlagPayloadLen: decode the payload
// with DecodeBlockStatusPayload), for which it returns 0, false.
func (m Mode) EffectLength(r ExtendedRequest) (uint64, bool) {
	if m == ModeExtended && r.Flags&CmdFlagPayloadLen != 0 && r.Type != CmdWrite {
		return 0, false
	}
	return r.Length, true
}

// PutChunkHeader encodes h as a reply chunk header of mode m into b and
// returns the bytes written: a 20-byte structured header (without h.Offset)
// in ModeStructured, a 32-byte extended one in ModeExtended. Outside
// ModeExtended h.Length must fit in 32 bits. It panics in ModeSimple,
// which has no chunks: the caller decides between chunks and simple
// replies with m >= ModeStructured.
func (m Mode) PutChunkHeader(b []byte, h ExtendedChunkHeader) int {
	switch m {
	case ModeExtended:
		h.Put(b)
		return ExtendedChunkHeaderSize
	case ModeStructured:
		if h.Length > math.MaxUint32 {
			panic(fmt.Sprintf("protocol: %v chunk of %d bytes under structured replies", h.Type, h.Length))
		}
		ChunkHeader{Flags: h.Flags, Type: h.Type, Cookie: h.Cookie, Length: uint32(h.Length)}.Put(b)
		return ChunkHeaderSize
	}
	panic("protocol: reply chunk in " + m.String() + " mode")
}

// PutSuccess encodes into b the whole reply to a request that succeeded
// and sends no payload, and returns the bytes written: a simple reply in
// the compact modes, and in ModeExtended, where simple replies are
// forbidden, an NBD_REPLY_TYPE_NONE chunk with NBD_REPLY_FLAG_DONE
// carrying the request's offset. b must hold max(SimpleReplySize,
// m.ChunkHeaderSize()) bytes.
func (m Mode) PutSuccess(b []byte, cookie, offset uint64) int {
	if m == ModeExtended {
		return m.PutChunkHeader(b, ExtendedChunkHeader{Flags: ReplyFlagDone, Type: ReplyTypeNone, Cookie: cookie, Offset: offset})
	}
	SimpleReply{Cookie: cookie}.Put(b)
	return SimpleReplySize
}

// StatusChunkType is the chunk type of a successful block status reply
// in mode m: NBD_REPLY_TYPE_BLOCK_STATUS_EXT with extended headers,
// NBD_REPLY_TYPE_BLOCK_STATUS otherwise ("NBD_CMD_BLOCK_STATUS": "only
// NBD_REPLY_TYPE_BLOCK_STATUS for structured replies, and only
// NBD_REPLY_TYPE_BLOCK_STATUS_EXT for extended headers").
func (m Mode) StatusChunkType() ReplyType {
	if m == ModeExtended {
		return ReplyTypeBlockStatusExt
	}
	return ReplyTypeBlockStatus
}

// AppendStatusHeader appends the start of a status chunk's payload: the
// context ID, and with extended headers a descriptor count, left 0 for
// FinishStatus to fill in once the extents are appended.
func (m Mode) AppendStatusHeader(b []byte, contextID uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, contextID)
	if m == ModeExtended {
		b = binary.BigEndian.AppendUint32(b, 0)
	}
	return b
}

// DescriptorSize is the size of one extent in a status chunk of mode m.
func (m Mode) DescriptorSize() int {
	if m == ModeExtended {
		return BlockDescriptorExtSize
	}
	return BlockDescriptorSize
}

// AppendBlockDescriptor appends one extent of a status chunk of mode m:
// 64-bit length and status with extended headers, 32-bit ones otherwise,
// where length must fit in 32 bits (it cannot exceed the request's).
func (m Mode) AppendBlockDescriptor(b []byte, length uint64, status uint32) []byte {
	if m == ModeExtended {
		return AppendBlockDescriptorExt(b, length, uint64(status))
	}
	if length > math.MaxUint32 {
		panic(fmt.Sprintf("protocol: extent of %d bytes in a compact status chunk", length))
	}
	return AppendBlockDescriptor(b, uint32(length), status)
}

// FinishStatus completes a status chunk payload that AppendStatusHeader
// started and AppendBlockDescriptor filled: with extended headers it
// writes the descriptor count the payload's length implies ("the header
// length is equal to descriptor count * 16 + 8"). Other modes have no
// count.
func (m Mode) FinishStatus(payload []byte) {
	if m != ModeExtended {
		return
	}
	n := (len(payload) - BlockStatusExtHeaderSize) / BlockDescriptorExtSize
	binary.BigEndian.PutUint32(payload[4:], uint32(n))
}

// TransmissionFlags returns f without the flags that mode m does not
// permit a server to advertise: NBD_FLAG_SEND_DF without reply chunks
// (proto.md "Transmission flags": "MUST leave this flag clear if neither
// structured replies nor extended headers have been negotiated") and
// NBD_FLAG_BLOCK_STATUS_PAYLOAD without extended headers ("Servers MUST
// NOT advertise this bit unless the client successfully negotiates
// extended headers").
func (m Mode) TransmissionFlags(f TransmissionFlag) TransmissionFlag {
	if m < ModeStructured {
		f &^= FlagSendDF
	}
	if m < ModeExtended {
		f &^= FlagBlockStatusPayload
	}
	return f
}

// Negotiate is the server's answer, in mode m, to a client's
// NBD_OPT_STRUCTURED_REPLY or NBD_OPT_EXTENDED_HEADERS carrying dataLen
// bytes of data, and the mode that follows it. These are the rules for a
// client that mixes header kinds, as qemu-nbd and nbdkit apply them:
//
//   - either option with data: NBD_REP_ERR_INVALID ("The client MUST NOT
//     send any additional data with the option");
//   - NBD_OPT_EXTENDED_HEADERS from the compact modes: NBD_REP_ACK, and
//     extended headers take precedence over structured replies;
//   - NBD_OPT_STRUCTURED_REPLY once extended headers are negotiated:
//     NBD_REP_ERR_EXT_HEADER_REQD ("the server is unable to downgrade to
//     structured replies");
//   - either option asked for again once in force: NBD_REP_ERR_INVALID,
//     the mode kept.
//
// A refused option never changes the mode. Any other option returns m,
// NBD_REP_ERR_UNSUP. After a successful NBD_OPT_STARTTLS the mode is
// ModeSimple again ("the server MUST NOT preserve any negotiation state").
func (m Mode) Negotiate(opt Opt, dataLen uint32) (Mode, Rep) {
	var want Mode
	switch opt {
	case OptStructuredReply:
		want = ModeStructured
	case OptExtendedHeaders:
		want = ModeExtended
	default:
		return m, RepErrUnsup
	}
	switch {
	case dataLen != 0, m == want:
		return m, RepErrInvalid
	case m > want:
		return m, RepErrExtHeaderReqd
	}
	return want, RepAck
}

// Permits reports whether a client may send opt in mode m. Only
// NBD_OPT_EXPORT_NAME is forbidden, once extended headers are negotiated
// ("a client MUST NOT use NBD_OPT_EXPORT_NAME"); since that option has no
// error reply, the server ends the session.
func (m Mode) Permits(opt Opt) bool {
	return !(m == ModeExtended && opt == OptExportName)
}
