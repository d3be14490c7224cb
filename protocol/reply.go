package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The client's side of the replies: decoders for option reply data and
// structured reply payloads, the counterparts of the Append* encoders.

// ErrMalformedReply is returned when option reply data or a structured
// reply payload does not have the layout proto.md gives it (a client
// "MUST initiate a hard disconnect" on such a structured reply: proto.md
// "Structured reply types").
var ErrMalformedReply = errors.New("nbd: malformed reply data")

func malformedReply(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformedReply}, args...)...)
}

// InfoReply is the data of one NBD_REP_INFO (proto.md "NBD_REP_INFO"),
// decoded. Only the fields of its Type are set.
type InfoReply struct {
	Type      Info
	Size      uint64           // NBD_INFO_EXPORT
	Flags     TransmissionFlag // NBD_INFO_EXPORT
	Text      string           // NBD_INFO_NAME, NBD_INFO_DESCRIPTION
	BlockSize BlockSize        // NBD_INFO_BLOCK_SIZE
}

// Lengths of the NBD_REP_INFO data of fixed size, type included.
const (
	InfoExportLen    = 12 // NBD_INFO_EXPORT: type, size, flags
	InfoBlockSizeLen = 14 // NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum
)

// DecodeInfoReply decodes the data of an NBD_REP_INFO. An information
// type it does not know is returned with only Type set, not as an error:
// a client "MUST ignore" those. A known type of the wrong length is
// ErrMalformedReply.
func DecodeInfoReply(data []byte) (InfoReply, error) {
	if len(data) < 2 {
		return InfoReply{}, malformedReply("NBD_REP_INFO of %d bytes", len(data))
	}
	r := InfoReply{Type: Info(binary.BigEndian.Uint16(data))}
	want := -1
	switch r.Type {
	case InfoExport:
		want = InfoExportLen
	case InfoBlockSize:
		want = InfoBlockSizeLen
	case InfoName, InfoDescription:
		if len(data)-2 > MaxStringLen {
			return InfoReply{}, malformedReply("%v of %d bytes", r.Type, len(data)-2)
		}
		r.Text = string(data[2:])
		return r, nil
	default:
		return r, nil
	}
	if len(data) != want {
		return InfoReply{}, malformedReply("%v of %d bytes; want %d", r.Type, len(data), want)
	}
	if r.Type == InfoExport {
		r.Size = binary.BigEndian.Uint64(data[2:])
		r.Flags = TransmissionFlag(binary.BigEndian.Uint16(data[10:]))
		return r, nil
	}
	r.BlockSize = BlockSize{
		Min:       binary.BigEndian.Uint32(data[2:]),
		Preferred: binary.BigEndian.Uint32(data[6:]),
		Max:       binary.BigEndian.Uint32(data[10:]),
	}
	return r, nil
}

// AppendInfoReply appends the data of an NBD_REP_INFO carrying r, by its
// Type; an unknown Type is appended alone.
func AppendInfoReply(b []byte, r InfoReply) []byte {
	switch r.Type {
	case InfoExport:
		return AppendInfoExport(b, r.Size, r.Flags)
	case InfoBlockSize:
		return AppendInfoBlockSize(b, r.BlockSize)
	case InfoName, InfoDescription:
		return AppendInfoString(b, r.Type, r.Text)
	}
	return binary.BigEndian.AppendUint16(b, uint16(r.Type))
}

// ServerReply is the data of an NBD_REP_SERVER, one export of
// NBD_OPT_LIST: its name and, as free-form details, its description.
type ServerReply struct {
	Name, Description string
}

// DecodeServerReply decodes the data of an NBD_REP_SERVER.
func DecodeServerReply(data []byte) (ServerReply, error) {
	name, rest, err := decodeString(data)
	if err != nil {
		return ServerReply{}, malformedReply("NBD_REP_SERVER: %v", err)
	}
	return ServerReply{Name: name, Description: string(rest)}, nil
}

// MetaContextReply is the data of an NBD_REP_META_CONTEXT: the ID the
// server gives a context and its name.
type MetaContextReply struct {
	ID   uint32
	Name string
}

// DecodeMetaContextReply decodes the data of an NBD_REP_META_CONTEXT.
func DecodeMetaContextReply(data []byte) (MetaContextReply, error) {
	if len(data) < 4 || len(data)-4 > MaxStringLen {
		return MetaContextReply{}, malformedReply("NBD_REP_META_CONTEXT of %d bytes", len(data))
	}
	return MetaContextReply{ID: binary.BigEndian.Uint32(data), Name: string(data[4:])}, nil
}

// DecodeExportNameReply decodes the reply to NBD_OPT_EXPORT_NAME without
// its padding: the export size and transmission flags.
func DecodeExportNameReply(b *[ExportNameReplySize]byte) (size uint64, flags TransmissionFlag) {
	return binary.BigEndian.Uint64(b[0:]), TransmissionFlag(binary.BigEndian.Uint16(b[8:]))
}

// ErrorChunk is the payload of an NBD_REPLY_TYPE_ERROR or
// NBD_REPLY_TYPE_ERROR_OFFSET chunk.
type ErrorChunk struct {
	Errno   Errno
	Message string
	Offset  uint64 // ERROR_OFFSET only
}

// DecodeErrorChunk decodes the payload of an error chunk of type typ.
// ERROR_OFFSET carries the offset after the message; other error types
// may carry more, which is ignored (proto.md "Structured reply types").
func DecodeErrorChunk(typ ReplyType, p []byte) (ErrorChunk, error) {
	if len(p) < 6 {
		return ErrorChunk{}, malformedReply("%v payload of %d bytes", typ, len(p))
	}
	n := int(binary.BigEndian.Uint16(p[4:]))
	if n > MaxErrorMessageLen || 6+n > len(p) {
		return ErrorChunk{}, malformedReply("%v message of %d bytes in %d", typ, n, len(p))
	}
	e := ErrorChunk{Errno: Errno(binary.BigEndian.Uint32(p)), Message: string(p[6 : 6+n])}
	if typ == ReplyTypeErrorOffset {
		if len(p) != 6+n+8 {
			return ErrorChunk{}, malformedReply("%v payload of %d bytes; want %d", typ, len(p), 6+n+8)
		}
		e.Offset = binary.BigEndian.Uint64(p[6+n:])
	}
	return e, nil
}

// DecodeOffsetData splits the payload of an OFFSET_DATA chunk into its
// offset and its data, which aliases p.
func DecodeOffsetData(p []byte) (offset uint64, data []byte, err error) {
	if len(p) < OffsetDataHeaderSize {
		return 0, nil, malformedReply("OFFSET_DATA payload of %d bytes", len(p))
	}
	return binary.BigEndian.Uint64(p), p[OffsetDataHeaderSize:], nil
}

// OffsetHole is the payload of an OFFSET_HOLE chunk.
type OffsetHole struct {
	Offset uint64
	Size   uint32
}

// DecodeOffsetHole decodes the payload of an OFFSET_HOLE chunk.
func DecodeOffsetHole(p []byte) (OffsetHole, error) {
	if len(p) != OffsetHoleSize {
		return OffsetHole{}, malformedReply("OFFSET_HOLE payload of %d bytes; want %d", len(p), OffsetHoleSize)
	}
	return OffsetHole{Offset: binary.BigEndian.Uint64(p), Size: binary.BigEndian.Uint32(p[8:])}, nil
}

// BlockDescriptor is one extent of a BLOCK_STATUS chunk: its length and
// its flags in the chunk's context (StateHole, StateZero for
// base:allocation).
type BlockDescriptor struct {
	Length, Flags uint32
}

// DecodeBlockStatus decodes the payload of a BLOCK_STATUS chunk: the
// context ID, then the extents.
func DecodeBlockStatus(p []byte) (contextID uint32, extents []BlockDescriptor, err error) {
	if len(p) < 4 || (len(p)-4)%BlockDescriptorSize != 0 {
		return 0, nil, malformedReply("BLOCK_STATUS payload of %d bytes", len(p))
	}
	contextID = binary.BigEndian.Uint32(p)
	for b := p[4:]; len(b) > 0; b = b[BlockDescriptorSize:] {
		extents = append(extents, BlockDescriptor{Length: binary.BigEndian.Uint32(b), Flags: binary.BigEndian.Uint32(b[4:])})
	}
	return contextID, extents, nil
}
