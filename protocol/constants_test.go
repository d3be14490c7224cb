package protocol

import (
	"fmt"
	"testing"
)

// TestString checks that every typed constant renders as its proto.md name,
// that unknown values render as PREFIX(decimal), and that flag sets join
// their names with | and show unknown bits in hex.
func TestString(t *testing.T) {
	tests := []struct {
		v    fmt.Stringer
		want string
	}{
		// Handshake flags ("Handshake flags").
		{FlagFixedNewstyle, "NBD_FLAG_FIXED_NEWSTYLE"},
		{FlagNoZeroes, "NBD_FLAG_NO_ZEROES"},
		{FlagFixedNewstyle | FlagNoZeroes, "NBD_FLAG_FIXED_NEWSTYLE|NBD_FLAG_NO_ZEROES"},
		{HandshakeFlag(0), "0"},
		{HandshakeFlag(1 << 15), "0x8000"},
		{FlagFixedNewstyle | 1<<2, "NBD_FLAG_FIXED_NEWSTYLE|0x4"},

		// Client flags ("Client flags").
		{ClientFixedNewstyle, "NBD_FLAG_C_FIXED_NEWSTYLE"},
		{ClientNoZeroes, "NBD_FLAG_C_NO_ZEROES"},
		{KnownClientFlags, "NBD_FLAG_C_FIXED_NEWSTYLE|NBD_FLAG_C_NO_ZEROES"},
		{ClientFlag(0), "0"},
		{ClientFlag(1 << 31), "0x80000000"},
		{ClientNoZeroes | 0xfc, "NBD_FLAG_C_NO_ZEROES|0xfc"},

		// Transmission flags ("Transmission flags").
		{FlagHasFlags, "NBD_FLAG_HAS_FLAGS"},
		{FlagReadOnly, "NBD_FLAG_READ_ONLY"},
		{FlagSendFlush, "NBD_FLAG_SEND_FLUSH"},
		{FlagSendFUA, "NBD_FLAG_SEND_FUA"},
		{FlagRotational, "NBD_FLAG_ROTATIONAL"},
		{FlagSendTrim, "NBD_FLAG_SEND_TRIM"},
		{FlagSendWriteZeroes, "NBD_FLAG_SEND_WRITE_ZEROES"},
		{FlagSendDF, "NBD_FLAG_SEND_DF"},
		{FlagCanMultiConn, "NBD_FLAG_CAN_MULTI_CONN"},
		{FlagSendResize, "NBD_FLAG_SEND_RESIZE"},
		{FlagSendCache, "NBD_FLAG_SEND_CACHE"},
		{FlagSendFastZero, "NBD_FLAG_SEND_FAST_ZERO"},
		{FlagBlockStatusPayload, "NBD_FLAG_BLOCK_STATUS_PAYLOAD"},
		{FlagHasFlags | FlagReadOnly | FlagSendFlush, "NBD_FLAG_HAS_FLAGS|NBD_FLAG_READ_ONLY|NBD_FLAG_SEND_FLUSH"},
		{TransmissionFlag(0), "0"},
		{TransmissionFlag(1 << 13), "0x2000"},
		{FlagHasFlags | 0xc000, "NBD_FLAG_HAS_FLAGS|0xc000"},

		// Option types ("Option types").
		{OptExportName, "NBD_OPT_EXPORT_NAME"},
		{OptAbort, "NBD_OPT_ABORT"},
		{OptList, "NBD_OPT_LIST"},
		{OptPeekExport, "NBD_OPT_PEEK_EXPORT"},
		{OptStartTLS, "NBD_OPT_STARTTLS"},
		{OptInfo, "NBD_OPT_INFO"},
		{OptGo, "NBD_OPT_GO"},
		{OptStructuredReply, "NBD_OPT_STRUCTURED_REPLY"},
		{OptListMetaContext, "NBD_OPT_LIST_META_CONTEXT"},
		{OptSetMetaContext, "NBD_OPT_SET_META_CONTEXT"},
		{OptExtendedHeaders, "NBD_OPT_EXTENDED_HEADERS"},
		{Opt(0), "NBD_OPT(0)"},
		{Opt(99), "NBD_OPT(99)"},
		{Opt(0xffffffff), "NBD_OPT(4294967295)"},

		// Option reply types ("Option reply types").
		{RepAck, "NBD_REP_ACK"},
		{RepServer, "NBD_REP_SERVER"},
		{RepInfo, "NBD_REP_INFO"},
		{RepMetaContext, "NBD_REP_META_CONTEXT"},
		{RepErrUnsup, "NBD_REP_ERR_UNSUP"},
		{RepErrPolicy, "NBD_REP_ERR_POLICY"},
		{RepErrInvalid, "NBD_REP_ERR_INVALID"},
		{RepErrPlatform, "NBD_REP_ERR_PLATFORM"},
		{RepErrTLSReqd, "NBD_REP_ERR_TLS_REQD"},
		{RepErrUnknown, "NBD_REP_ERR_UNKNOWN"},
		{RepErrShutdown, "NBD_REP_ERR_SHUTDOWN"},
		{RepErrBlockSizeReqd, "NBD_REP_ERR_BLOCK_SIZE_REQD"},
		{RepErrTooBig, "NBD_REP_ERR_TOO_BIG"},
		{RepErrExtHeaderReqd, "NBD_REP_ERR_EXT_HEADER_REQD"},
		{Rep(99), "NBD_REP(99)"},
		{Rep(1<<31 + 99), "NBD_REP(2147483747)"},

		// Information types ("NBD_REP_INFO").
		{InfoExport, "NBD_INFO_EXPORT"},
		{InfoName, "NBD_INFO_NAME"},
		{InfoDescription, "NBD_INFO_DESCRIPTION"},
		{InfoBlockSize, "NBD_INFO_BLOCK_SIZE"},
		{Info(99), "NBD_INFO(99)"},

		// Request types ("Request types").
		{CmdRead, "NBD_CMD_READ"},
		{CmdWrite, "NBD_CMD_WRITE"},
		{CmdDisc, "NBD_CMD_DISC"},
		{CmdFlush, "NBD_CMD_FLUSH"},
		{CmdTrim, "NBD_CMD_TRIM"},
		{CmdCache, "NBD_CMD_CACHE"},
		{CmdWriteZeroes, "NBD_CMD_WRITE_ZEROES"},
		{CmdBlockStatus, "NBD_CMD_BLOCK_STATUS"},
		{CmdResize, "NBD_CMD_RESIZE"},
		{Cmd(9), "NBD_CMD(9)"},
		{Cmd(99), "NBD_CMD(99)"},
		{Cmd(0xffff), "NBD_CMD(65535)"},

		// Command flags ("Command flags").
		{CmdFlagFUA, "NBD_CMD_FLAG_FUA"},
		{CmdFlagNoHole, "NBD_CMD_FLAG_NO_HOLE"},
		{CmdFlagDF, "NBD_CMD_FLAG_DF"},
		{CmdFlagReqOne, "NBD_CMD_FLAG_REQ_ONE"},
		{CmdFlagFastZero, "NBD_CMD_FLAG_FAST_ZERO"},
		{CmdFlagPayloadLen, "NBD_CMD_FLAG_PAYLOAD_LEN"},
		{CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero, "NBD_CMD_FLAG_FUA|NBD_CMD_FLAG_NO_HOLE|NBD_CMD_FLAG_FAST_ZERO"},
		{CmdFlag(0), "0"},
		{CmdFlag(1 << 6), "0x40"},
		{CmdFlagFUA | 0x8000, "NBD_CMD_FLAG_FUA|0x8000"},
		{CmdFlag(0xffff), "NBD_CMD_FLAG_FUA|NBD_CMD_FLAG_NO_HOLE|NBD_CMD_FLAG_DF|NBD_CMD_FLAG_REQ_ONE|NBD_CMD_FLAG_FAST_ZERO|NBD_CMD_FLAG_PAYLOAD_LEN|0xffc0"},

		// Reply flags ("Structured reply flags").
		{ReplyFlagDone, "NBD_REPLY_FLAG_DONE"},
		{ReplyFlag(0), "0"},
		{ReplyFlagDone | 0x8000, "NBD_REPLY_FLAG_DONE|0x8000"},

		// Structured reply types ("Structured reply types").
		{ReplyTypeNone, "NBD_REPLY_TYPE_NONE"},
		{ReplyTypeOffsetData, "NBD_REPLY_TYPE_OFFSET_DATA"},
		{ReplyTypeOffsetHole, "NBD_REPLY_TYPE_OFFSET_HOLE"},
		{ReplyTypeBlockStatus, "NBD_REPLY_TYPE_BLOCK_STATUS"},
		{ReplyTypeBlockStatusExt, "NBD_REPLY_TYPE_BLOCK_STATUS_EXT"},
		{ReplyTypeError, "NBD_REPLY_TYPE_ERROR"},
		{ReplyTypeErrorOffset, "NBD_REPLY_TYPE_ERROR_OFFSET"},
		{ReplyType(3), "NBD_REPLY_TYPE(3)"},
		{ReplyType(1<<15 + 3), "NBD_REPLY_TYPE(32771)"},

		// Error values ("Error values").
		{EOK, "OK"},
		{EPERM, "NBD_EPERM"},
		{EIO, "NBD_EIO"},
		{ENOMEM, "NBD_ENOMEM"},
		{EINVAL, "NBD_EINVAL"},
		{ENOSPC, "NBD_ENOSPC"},
		{EOVERFLOW, "NBD_EOVERFLOW"},
		{ENOTSUP, "NBD_ENOTSUP"},
		{ESHUTDOWN, "NBD_ESHUTDOWN"},
		{Errno(99), "NBD_ERRNO(99)"},
	}
	for _, tt := range tests {
		if got := tt.v.String(); got != tt.want {
			t.Errorf("%T(%#x).String() = %q; want %q", tt.v, tt.v, got, tt.want)
		}
		// %v in a log line or error must use the name too.
		if got := fmt.Sprintf("%v", tt.v); got != tt.want {
			t.Errorf("%T %%v = %q; want %q", tt.v, got, tt.want)
		}
	}
}

// TestErrorClasses checks the bit that marks error replies and error chunks.
func TestErrorClasses(t *testing.T) {
	reps := []struct {
		r    Rep
		want bool
	}{
		{RepAck, false}, {RepServer, false}, {RepInfo, false}, {RepMetaContext, false},
		{RepErrUnsup, true}, {RepErrUnknown, true}, {RepErrExtHeaderReqd, true}, {Rep(1 << 31), true},
	}
	for _, tt := range reps {
		if got := tt.r.IsError(); got != tt.want {
			t.Errorf("%v.IsError() = %t; want %t", tt.r, got, tt.want)
		}
	}
	types := []struct {
		rt   ReplyType
		want bool
	}{
		{ReplyTypeNone, false}, {ReplyTypeOffsetData, false}, {ReplyTypeOffsetHole, false},
		{ReplyTypeBlockStatus, false}, {ReplyTypeError, true}, {ReplyTypeErrorOffset, true}, {ReplyType(0xffff), true},
	}
	for _, tt := range types {
		if got := tt.rt.IsError(); got != tt.want {
			t.Errorf("%v.IsError() = %t; want %t", tt.rt, got, tt.want)
		}
	}
}

// TestMagics pins the magic numbers to their proto.md values.
func TestMagics(t *testing.T) {
	tests := []struct {
		name      string
		got, want uint64
	}{
		{"NBDMagic", NBDMagic, 0x4e42444d41474943},                         // "NBDMAGIC"
		{"IHaveOpt", IHaveOpt, 0x49484156454F5054},                         // "IHAVEOPT"
		{"OptionReplyMagic", OptionReplyMagic, 0x3e889045565a9},            // "Fixed newstyle negotiation"
		{"RequestMagic", uint64(RequestMagic), 0x25609513},                 // NBD_REQUEST_MAGIC
		{"ExtendedRequestMagic", uint64(ExtendedRequestMagic), 0x21e41c71}, // NBD_EXTENDED_REQUEST_MAGIC
		{"SimpleReplyMagic", uint64(SimpleReplyMagic), 0x67446698},         // NBD_SIMPLE_REPLY_MAGIC
		{"StructuredReplyMagic", uint64(StructuredReplyMagic), 0x668e33ef}, // NBD_STRUCTURED_REPLY_MAGIC
		{"ExtendedReplyMagic", uint64(ExtendedReplyMagic), 0x6e8a278c},     // NBD_EXTENDED_REPLY_MAGIC
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x; want %#x", tt.name, tt.got, tt.want)
		}
	}
}
