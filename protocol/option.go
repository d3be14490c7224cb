package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrMalformedOption means an option's data does not match its declared
// structure. The server answers NBD_REP_ERR_INVALID and keeps the connection
// (the whole option was already read, so the stream is in sync).
var ErrMalformedOption = errors.New("nbd: malformed option data")

// ErrTooManyQueries means a meta context option has more queries than
// MaxMetaContextQueries. The server answers NBD_REP_ERR_TOO_BIG (proto.md
// "NBD_OPT_LIST_META_CONTEXT").
var ErrTooManyQueries = errors.New("nbd: too many meta context queries")

// ExportRequest is the data of NBD_OPT_INFO and NBD_OPT_GO: an export name
// and the information types the client asks for (proto.md "NBD_OPT_INFO").
type ExportRequest struct {
	Name  string
	Infos []Info
}

// MaxInfoRequests bounds the number of information requests in one option.
// The bound follows from MaxOptionLen, but an explicit cap keeps the decoder
// honest about what it allocates.
const MaxInfoRequests = 64

// DecodeExportRequest parses the data of NBD_OPT_INFO or NBD_OPT_GO. The
// name must not exceed MaxStringLen bytes; information requests beyond
// the first MaxInfoRequests are dropped, since the server ignores unknown
// ones anyway. Duplicates are kept: answering each once is the server's
// business.
func DecodeExportRequest(data []byte) (ExportRequest, error) {
	name, rest, err := decodeString(data)
	if err != nil {
		return ExportRequest{}, err
	}
	if len(rest) < 2 {
		return ExportRequest{}, fmt.Errorf("%w: missing information request count", ErrMalformedOption)
	}
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return ExportRequest{}, fmt.Errorf("%w: %d information requests in %d bytes", ErrMalformedOption, n, len(rest))
	}
	req := ExportRequest{Name: name}
	for i := 0; i < n && len(req.Infos) < MaxInfoRequests; i++ {
		req.Infos = append(req.Infos, Info(binary.BigEndian.Uint16(rest[2*i:])))
	}
	return req, nil
}

// AppendExportRequest appends the encoding of r (used by clients and tests).
func AppendExportRequest(b []byte, r ExportRequest) []byte {
	b = appendString(b, r.Name)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Infos)))
	for _, i := range r.Infos {
		b = binary.BigEndian.AppendUint16(b, uint16(i))
	}
	return b
}

// MetaContextRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT (proto.md "NBD_OPT_LIST_META_CONTEXT").
type MetaContextRequest struct {
	Name    string
	Queries []string
}

// MaxMetaContextQueries bounds the number of queries in one option.
const MaxMetaContextQueries = 128

// DecodeMetaContextRequest parses the data of the meta context options.
func DecodeMetaContextRequest(data []byte) (MetaContextRequest, error) {
	name, rest, err := decodeString(data)
	if err != nil {
		return MetaContextRequest{}, err
	}
	if len(rest) < 4 {
		return MetaContextRequest{}, fmt.Errorf("%w: missing query count", ErrMalformedOption)
	}
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if n > MaxMetaContextQueries {
		return MetaContextRequest{}, fmt.Errorf("%w: %d, at most %d", ErrTooManyQueries, n, MaxMetaContextQueries)
	}
	req := MetaContextRequest{Name: name}
	for i := uint32(0); i < n; i++ {
		var q string
		if q, rest, err = decodeString(rest); err != nil {
			return MetaContextRequest{}, err
		}
		req.Queries = append(req.Queries, q)
	}
	if len(rest) != 0 {
		return MetaContextRequest{}, fmt.Errorf("%w: %d trailing bytes", ErrMalformedOption, len(rest))
	}
	return req, nil
}

// AppendMetaContextRequest appends the encoding of r.
func AppendMetaContextRequest(b []byte, r MetaContextRequest) []byte {
	b = appendString(b, r.Name)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Queries)))
	for _, q := range r.Queries {
		b = appendString(b, q)
	}
	return b
}

// decodeString reads a 32-bit length and that many bytes, bounded by
// MaxStringLen.
func decodeString(data []byte) (string, []byte, error) {
	if len(data) < 4 {
		return "", nil, fmt.Errorf("%w: missing string length", ErrMalformedOption)
	}
	n := binary.BigEndian.Uint32(data)
	if n > MaxStringLen {
		return "", nil, fmt.Errorf("%w: string of %d bytes, at most %d", ErrMalformedOption, n, MaxStringLen)
	}
	if uint64(len(data)-4) < uint64(n) {
		return "", nil, fmt.Errorf("%w: string of %d bytes in %d", ErrMalformedOption, n, len(data)-4)
	}
	return string(data[4 : 4+n]), data[4+n:], nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// AppendOptionReply appends a complete option reply with data to b.
func AppendOptionReply(b []byte, opt Opt, typ Rep, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, OptionReplyMagic)
	b = binary.BigEndian.AppendUint32(b, uint32(opt))
	b = binary.BigEndian.AppendUint32(b, uint32(typ))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// AppendInfoExport appends the data of an NBD_REP_INFO carrying
// NBD_INFO_EXPORT: the export size and transmission flags.
func AppendInfoExport(b []byte, size uint64, flags TransmissionFlag) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(InfoExport))
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, uint16(flags))
}

// AppendInfoString appends the data of an NBD_REP_INFO carrying
// NBD_INFO_NAME or NBD_INFO_DESCRIPTION.
func AppendInfoString(b []byte, typ Info, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(typ))
	return append(b, s...)
}

// BlockSize is the payload of NBD_INFO_BLOCK_SIZE
// (proto.md "Block size constraints").
type BlockSize struct {
	Min, Preferred, Max uint32
}

// AppendInfoBlockSize appends the data of an NBD_REP_INFO carrying
// NBD_INFO_BLOCK_SIZE.
func AppendInfoBlockSize(b []byte, bs BlockSize) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(InfoBlockSize))
	b = binary.BigEndian.AppendUint32(b, bs.Min)
	b = binary.BigEndian.AppendUint32(b, bs.Preferred)
	return binary.BigEndian.AppendUint32(b, bs.Max)
}

// AppendServer appends the data of an NBD_REP_SERVER for NBD_OPT_LIST: the
// export name and, as free-form details, its description.
func AppendServer(b []byte, name, description string) []byte {
	b = appendString(b, name)
	return append(b, description...)
}

// AppendMetaContext appends the data of an NBD_REP_META_CONTEXT.
func AppendMetaContext(b []byte, id uint32, name string) []byte {
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, name...)
}

// PutExportNameReply encodes the reply to NBD_OPT_EXPORT_NAME without its
// padding: the export size and transmission flags.
func PutExportNameReply(b *[ExportNameReplySize]byte, size uint64, flags TransmissionFlag) {
	binary.BigEndian.PutUint64(b[0:], size)
	binary.BigEndian.PutUint16(b[8:], uint16(flags))
}

// Structured reply payload sizes (proto.md "Structured reply types").
const (
	// OffsetDataHeaderSize is the offset that precedes OFFSET_DATA's data.
	OffsetDataHeaderSize = 8
	// OffsetHoleSize is the payload of OFFSET_HOLE: offset and hole size.
	OffsetHoleSize = 12
	// BlockDescriptorSize is one extent in a BLOCK_STATUS chunk.
	BlockDescriptorSize = 8
	// MaxErrorMessageLen bounds the message of an error chunk.
	MaxErrorMessageLen = 4096
)

// AppendOffsetHole appends the payload of an OFFSET_HOLE chunk.
func AppendOffsetHole(b []byte, offset uint64, size uint32) []byte {
	b = binary.BigEndian.AppendUint64(b, offset)
	return binary.BigEndian.AppendUint32(b, size)
}

// AppendErrorChunk appends the payload of an ERROR chunk, or of an
// ERROR_OFFSET chunk when withOffset is set. The message is truncated to at
// most MaxErrorMessageLen bytes, at a UTF-8 character boundary: proto.md
// "Conventions" makes it a UTF-8 string, so a cut must not split a character.
func AppendErrorChunk(b []byte, errno Errno, msg string, withOffset bool, offset uint64) []byte {
	msg = Message(msg, MaxErrorMessageLen)
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	if withOffset {
		b = binary.BigEndian.AppendUint64(b, offset)
	}
	return b
}

// Message returns msg as a string the wire accepts (proto.md
// "Conventions": UTF-8, at most 4096 bytes): invalid UTF-8 replaced, and
// cut to at most max bytes without splitting a character. A message may
// carry text from elsewhere (an export name, a backend's error).
func Message(msg string, max int) string {
	if !utf8.ValidString(msg) {
		msg = strings.ToValidUTF8(msg, "\uFFFD")
	}
	if len(msg) <= max {
		return msg
	}
	n := max
	// msg[n] is the first byte dropped; if it continues a character, drop
	// that character's leading bytes too (at most UTFMax-1).
	for i := 1; i < utf8.UTFMax && n > 0 && !utf8.RuneStart(msg[n]); i++ {
		n--
	}
	return msg[:n]
}

// AppendBlockDescriptor appends one extent of a BLOCK_STATUS chunk.
func AppendBlockDescriptor(b []byte, length, flags uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, length)
	return binary.BigEndian.AppendUint32(b, flags)
}
