package protocol

import "fmt"

// Magic numbers (proto.md "Newstyle negotiation", "Request message",
// "Simple reply message", "Structured reply chunk message").
const (
	// NBDMagic opens every newstyle handshake ("NBDMAGIC").
	NBDMagic uint64 = 0x4e42444d41474943
	// IHaveOpt follows NBDMagic and prefixes every client option ("IHAVEOPT").
	IHaveOpt uint64 = 0x49484156454f5054
	// OptionReplyMagic prefixes every option reply.
	OptionReplyMagic uint64 = 0x0003e889045565a9
	// RequestMagic prefixes a compact transmission request.
	RequestMagic uint32 = 0x25609513
	// ExtendedRequestMagic prefixes a request once NBD_OPT_EXTENDED_HEADERS
	// is negotiated (the "extended headers" extension).
	ExtendedRequestMagic uint32 = 0x21e41c71
	// SimpleReplyMagic prefixes a simple reply.
	SimpleReplyMagic uint32 = 0x67446698
	// StructuredReplyMagic prefixes a structured reply chunk.
	StructuredReplyMagic uint32 = 0x668e33ef
	// ExtendedReplyMagic prefixes every reply chunk once
	// NBD_OPT_EXTENDED_HEADERS is negotiated.
	ExtendedReplyMagic uint32 = 0x6e8a278c
)

// Protocol limits.
const (
	// DefaultMaxPayload is the largest READ or WRITE a server accepts by
	// default: 32 MiB, the kernel client's largest request
	// (proto.md "Block size constraints": a maximum of at least 32 MiB is
	// assumed by clients that do not ask).
	DefaultMaxPayload = 32 << 20
	// MaxStringLen bounds export names, descriptions and meta context names
	// (proto.md "Option haggling": strings "MUST NOT exceed 4096 bytes").
	MaxStringLen = 4096
	// MaxOptionLen bounds the payload of one option; longer options are
	// refused without reading them into memory.
	MaxOptionLen = 64 << 10
	// ExportNamePadding is the number of zero bytes after the
	// NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was negotiated.
	ExportNamePadding = 124
)

// HandshakeFlag is a server handshake flag (proto.md "Handshake flags").
type HandshakeFlag uint16

// Server handshake flags.
const (
	FlagFixedNewstyle HandshakeFlag = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes      HandshakeFlag = 1 << 1 // NBD_FLAG_NO_ZEROES
)

// ClientFlag is a client handshake flag (proto.md "Client flags").
type ClientFlag uint32

// Client handshake flags.
const (
	ClientFixedNewstyle ClientFlag = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	ClientNoZeroes      ClientFlag = 1 << 1 // NBD_FLAG_C_NO_ZEROES
	// KnownClientFlags are the flags a server understands; any other bit
	// set makes the server close the connection (proto.md "Client flags").
	KnownClientFlags = ClientFixedNewstyle | ClientNoZeroes
)

// TransmissionFlag is a per-export flag sent at the end of the handshake
// (proto.md "Transmission flags").
type TransmissionFlag uint16

// Transmission flags.
const (
	FlagHasFlags           TransmissionFlag = 1 << 0  // NBD_FLAG_HAS_FLAGS
	FlagReadOnly           TransmissionFlag = 1 << 1  // NBD_FLAG_READ_ONLY
	FlagSendFlush          TransmissionFlag = 1 << 2  // NBD_FLAG_SEND_FLUSH
	FlagSendFUA            TransmissionFlag = 1 << 3  // NBD_FLAG_SEND_FUA
	FlagRotational         TransmissionFlag = 1 << 4  // NBD_FLAG_ROTATIONAL
	FlagSendTrim           TransmissionFlag = 1 << 5  // NBD_FLAG_SEND_TRIM
	FlagSendWriteZeroes    TransmissionFlag = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	FlagSendDF             TransmissionFlag = 1 << 7  // NBD_FLAG_SEND_DF
	FlagCanMultiConn       TransmissionFlag = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	FlagSendResize         TransmissionFlag = 1 << 9  // NBD_FLAG_SEND_RESIZE (experimental)
	FlagSendCache          TransmissionFlag = 1 << 10 // NBD_FLAG_SEND_CACHE
	FlagSendFastZero       TransmissionFlag = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
	FlagBlockStatusPayload TransmissionFlag = 1 << 12 // NBD_FLAG_BLOCK_STATUS_PAYLOAD (experimental)
)

var transmissionFlagNames = []string{
	"NBD_FLAG_HAS_FLAGS", "NBD_FLAG_READ_ONLY", "NBD_FLAG_SEND_FLUSH",
	"NBD_FLAG_SEND_FUA", "NBD_FLAG_ROTATIONAL", "NBD_FLAG_SEND_TRIM",
	"NBD_FLAG_SEND_WRITE_ZEROES", "NBD_FLAG_SEND_DF", "NBD_FLAG_CAN_MULTI_CONN",
	"NBD_FLAG_SEND_RESIZE", "NBD_FLAG_SEND_CACHE", "NBD_FLAG_SEND_FAST_ZERO",
	"NBD_FLAG_BLOCK_STATUS_PAYLOAD",
}

func (f TransmissionFlag) String() string { return bitNames(uint64(f), transmissionFlagNames) }

var handshakeFlagNames = []string{"NBD_FLAG_FIXED_NEWSTYLE", "NBD_FLAG_NO_ZEROES"}

func (f HandshakeFlag) String() string { return bitNames(uint64(f), handshakeFlagNames) }

var clientFlagNames = []string{"NBD_FLAG_C_FIXED_NEWSTYLE", "NBD_FLAG_C_NO_ZEROES"}

func (f ClientFlag) String() string { return bitNames(uint64(f), clientFlagNames) }

// Opt is a handshake option (proto.md "Option types").
type Opt uint32

// Option types.
const (
	OptExportName      Opt = 1  // NBD_OPT_EXPORT_NAME
	OptAbort           Opt = 2  // NBD_OPT_ABORT
	OptList            Opt = 3  // NBD_OPT_LIST
	OptPeekExport      Opt = 4  // NBD_OPT_PEEK_EXPORT (withdrawn)
	OptStartTLS        Opt = 5  // NBD_OPT_STARTTLS
	OptInfo            Opt = 6  // NBD_OPT_INFO
	OptGo              Opt = 7  // NBD_OPT_GO
	OptStructuredReply Opt = 8  // NBD_OPT_STRUCTURED_REPLY
	OptListMetaContext Opt = 9  // NBD_OPT_LIST_META_CONTEXT
	OptSetMetaContext  Opt = 10 // NBD_OPT_SET_META_CONTEXT
	OptExtendedHeaders Opt = 11 // NBD_OPT_EXTENDED_HEADERS (experimental)
)

var optNames = map[Opt]string{
	OptExportName: "NBD_OPT_EXPORT_NAME", OptAbort: "NBD_OPT_ABORT",
	OptList: "NBD_OPT_LIST", OptPeekExport: "NBD_OPT_PEEK_EXPORT",
	OptStartTLS: "NBD_OPT_STARTTLS", OptInfo: "NBD_OPT_INFO", OptGo: "NBD_OPT_GO",
	OptStructuredReply: "NBD_OPT_STRUCTURED_REPLY",
	OptListMetaContext: "NBD_OPT_LIST_META_CONTEXT",
	OptSetMetaContext:  "NBD_OPT_SET_META_CONTEXT",
	OptExtendedHeaders: "NBD_OPT_EXTENDED_HEADERS",
}

func (o Opt) String() string { return nameOr(optNames[o], "NBD_OPT", uint64(o)) }

// Rep is an option reply type (proto.md "Option reply types").
type Rep uint32

// repErr marks error replies: bit 31 set.
const repErr Rep = 1 << 31

// Option reply types.
const (
	RepAck              Rep = 1           // NBD_REP_ACK
	RepServer           Rep = 2           // NBD_REP_SERVER
	RepInfo             Rep = 3           // NBD_REP_INFO
	RepMetaContext      Rep = 4           // NBD_REP_META_CONTEXT
	RepErrUnsup         Rep = repErr + 1  // NBD_REP_ERR_UNSUP
	RepErrPolicy        Rep = repErr + 2  // NBD_REP_ERR_POLICY
	RepErrInvalid       Rep = repErr + 3  // NBD_REP_ERR_INVALID
	RepErrPlatform      Rep = repErr + 4  // NBD_REP_ERR_PLATFORM
	RepErrTLSReqd       Rep = repErr + 5  // NBD_REP_ERR_TLS_REQD
	RepErrUnknown       Rep = repErr + 6  // NBD_REP_ERR_UNKNOWN
	RepErrShutdown      Rep = repErr + 7  // NBD_REP_ERR_SHUTDOWN
	RepErrBlockSizeReqd Rep = repErr + 8  // NBD_REP_ERR_BLOCK_SIZE_REQD
	RepErrTooBig        Rep = repErr + 9  // NBD_REP_ERR_TOO_BIG
	RepErrExtHeaderReqd Rep = repErr + 10 // NBD_REP_ERR_EXT_HEADER_REQD (experimental)
)

var repNames = map[Rep]string{
	RepAck: "NBD_REP_ACK", RepServer: "NBD_REP_SERVER", RepInfo: "NBD_REP_INFO",
	RepMetaContext: "NBD_REP_META_CONTEXT", RepErrUnsup: "NBD_REP_ERR_UNSUP",
	RepErrPolicy: "NBD_REP_ERR_POLICY", RepErrInvalid: "NBD_REP_ERR_INVALID",
	RepErrPlatform: "NBD_REP_ERR_PLATFORM", RepErrTLSReqd: "NBD_REP_ERR_TLS_REQD",
	RepErrUnknown: "NBD_REP_ERR_UNKNOWN", RepErrShutdown: "NBD_REP_ERR_SHUTDOWN",
	RepErrBlockSizeReqd: "NBD_REP_ERR_BLOCK_SIZE_REQD", RepErrTooBig: "NBD_REP_ERR_TOO_BIG",
	RepErrExtHeaderReqd: "NBD_REP_ERR_EXT_HEADER_REQD",
}

func (r Rep) String() string { return nameOr(repNames[r], "NBD_REP", uint64(r)) }

// IsError reports whether r is an error reply (bit 31 set).
func (r Rep) IsError() bool { return r&repErr != 0 }

// Info is an information type in NBD_OPT_INFO and NBD_OPT_GO
// (proto.md "NBD_REP_INFO").
type Info uint16

// Information types.
const (
	InfoExport      Info = 0 // NBD_INFO_EXPORT
	InfoName        Info = 1 // NBD_INFO_NAME
	InfoDescription Info = 2 // NBD_INFO_DESCRIPTION
	InfoBlockSize   Info = 3 // NBD_INFO_BLOCK_SIZE
)

var infoNames = map[Info]string{
	InfoExport: "NBD_INFO_EXPORT", InfoName: "NBD_INFO_NAME",
	InfoDescription: "NBD_INFO_DESCRIPTION", InfoBlockSize: "NBD_INFO_BLOCK_SIZE",
}

func (i Info) String() string { return nameOr(infoNames[i], "NBD_INFO", uint64(i)) }

// Cmd is a transmission command (proto.md "Request types").
type Cmd uint16

// Commands.
const (
	CmdRead        Cmd = 0 // NBD_CMD_READ
	CmdWrite       Cmd = 1 // NBD_CMD_WRITE
	CmdDisc        Cmd = 2 // NBD_CMD_DISC
	CmdFlush       Cmd = 3 // NBD_CMD_FLUSH
	CmdTrim        Cmd = 4 // NBD_CMD_TRIM
	CmdCache       Cmd = 5 // NBD_CMD_CACHE
	CmdWriteZeroes Cmd = 6 // NBD_CMD_WRITE_ZEROES
	CmdBlockStatus Cmd = 7 // NBD_CMD_BLOCK_STATUS
	CmdResize      Cmd = 8 // NBD_CMD_RESIZE (experimental)
)

var cmdNames = []string{
	"NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_DISC", "NBD_CMD_FLUSH",
	"NBD_CMD_TRIM", "NBD_CMD_CACHE", "NBD_CMD_WRITE_ZEROES",
	"NBD_CMD_BLOCK_STATUS", "NBD_CMD_RESIZE",
}

func (c Cmd) String() string {
	if int(c) < len(cmdNames) {
		return cmdNames[c]
	}
	return nameOr("", "NBD_CMD", uint64(c))
}

// CmdFlag is a command flag (proto.md "Command flags").
type CmdFlag uint16

// Command flags.
const (
	CmdFlagFUA        CmdFlag = 1 << 0 // NBD_CMD_FLAG_FUA
	CmdFlagNoHole     CmdFlag = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	CmdFlagDF         CmdFlag = 1 << 2 // NBD_CMD_FLAG_DF
	CmdFlagReqOne     CmdFlag = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	CmdFlagFastZero   CmdFlag = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
	CmdFlagPayloadLen CmdFlag = 1 << 5 // NBD_CMD_FLAG_PAYLOAD_LEN (experimental)
)

var cmdFlagNames = []string{
	"NBD_CMD_FLAG_FUA", "NBD_CMD_FLAG_NO_HOLE", "NBD_CMD_FLAG_DF",
	"NBD_CMD_FLAG_REQ_ONE", "NBD_CMD_FLAG_FAST_ZERO", "NBD_CMD_FLAG_PAYLOAD_LEN",
}

func (f CmdFlag) String() string { return bitNames(uint64(f), cmdFlagNames) }

// ReplyFlag is a structured reply chunk flag.
type ReplyFlag uint16

// ReplyFlagDone marks the last chunk of a structured reply (NBD_REPLY_FLAG_DONE).
const ReplyFlagDone ReplyFlag = 1 << 0

var replyFlagNames = []string{"NBD_REPLY_FLAG_DONE"}

func (f ReplyFlag) String() string { return bitNames(uint64(f), replyFlagNames) }

// ReplyType is a structured reply chunk type (proto.md "Structured reply types").
type ReplyType uint16

// replyTypeErr marks error chunks: bit 15 set.
const replyTypeErr ReplyType = 1 << 15

// Structured reply chunk types.
const (
	ReplyTypeNone           ReplyType = 0                // NBD_REPLY_TYPE_NONE
	ReplyTypeOffsetData     ReplyType = 1                // NBD_REPLY_TYPE_OFFSET_DATA
	ReplyTypeOffsetHole     ReplyType = 2                // NBD_REPLY_TYPE_OFFSET_HOLE
	ReplyTypeBlockStatus    ReplyType = 5                // NBD_REPLY_TYPE_BLOCK_STATUS
	ReplyTypeBlockStatusExt ReplyType = 6                // NBD_REPLY_TYPE_BLOCK_STATUS_EXT (experimental)
	ReplyTypeError          ReplyType = replyTypeErr + 1 // NBD_REPLY_TYPE_ERROR
	ReplyTypeErrorOffset    ReplyType = replyTypeErr + 2 // NBD_REPLY_TYPE_ERROR_OFFSET
)

var replyTypeNames = map[ReplyType]string{
	ReplyTypeNone: "NBD_REPLY_TYPE_NONE", ReplyTypeOffsetData: "NBD_REPLY_TYPE_OFFSET_DATA",
	ReplyTypeOffsetHole: "NBD_REPLY_TYPE_OFFSET_HOLE", ReplyTypeBlockStatus: "NBD_REPLY_TYPE_BLOCK_STATUS",
	ReplyTypeBlockStatusExt: "NBD_REPLY_TYPE_BLOCK_STATUS_EXT", ReplyTypeError: "NBD_REPLY_TYPE_ERROR",
	ReplyTypeErrorOffset: "NBD_REPLY_TYPE_ERROR_OFFSET",
}

func (t ReplyType) String() string { return nameOr(replyTypeNames[t], "NBD_REPLY_TYPE", uint64(t)) }

// IsError reports whether t is an error chunk type (bit 15 set).
func (t ReplyType) IsError() bool { return t&replyTypeErr != 0 }

// Errno is an error value in a reply (proto.md "Error values"). The values
// are the Linux errno numbers the spec fixes for the wire, whatever the
// platform.
type Errno uint32

// Error values.
const (
	EOK       Errno = 0   // success
	EPERM     Errno = 1   // NBD_EPERM
	EIO       Errno = 5   // NBD_EIO
	ENOMEM    Errno = 12  // NBD_ENOMEM
	EINVAL    Errno = 22  // NBD_EINVAL
	ENOSPC    Errno = 28  // NBD_ENOSPC
	EOVERFLOW Errno = 75  // NBD_EOVERFLOW
	ENOTSUP   Errno = 95  // NBD_ENOTSUP
	ESHUTDOWN Errno = 108 // NBD_ESHUTDOWN
)

var errnoNames = map[Errno]string{
	EOK: "OK", EPERM: "NBD_EPERM", EIO: "NBD_EIO", ENOMEM: "NBD_ENOMEM",
	EINVAL: "NBD_EINVAL", ENOSPC: "NBD_ENOSPC", EOVERFLOW: "NBD_EOVERFLOW",
	ENOTSUP: "NBD_ENOTSUP", ESHUTDOWN: "NBD_ESHUTDOWN",
}

func (e Errno) String() string { return nameOr(errnoNames[e], "NBD_ERRNO", uint64(e)) }

// Meta context names (proto.md "Metadata querying").
const (
	// MetaContextBaseAllocation is the one context nbdd serves.
	MetaContextBaseAllocation = "base:allocation"
)

// Block status flags in the base:allocation context.
const (
	StateHole uint32 = 1 << 0 // NBD_STATE_HOLE
	StateZero uint32 = 1 << 1 // NBD_STATE_ZERO
)

// nameOr returns name, or prefix(value) for values the spec does not name.
func nameOr(name, prefix string, v uint64) string {
	if name != "" {
		return name
	}
	return fmt.Sprintf("%s(%d)", prefix, v)
}

// bitNames renders a flag set as NAME|NAME|0x..., names indexed by bit.
func bitNames(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	var s string
	for i, name := range names {
		if v&(1<<i) == 0 {
			continue
		}
		if s != "" {
			s += "|"
		}
		s += name
		v &^= 1 << i
	}
	if v != 0 {
		if s != "" {
			s += "|"
		}
		s += fmt.Sprintf("%#x", v)
	}
	return s
}
