package server

import "github.com/nbdd/nbdd/protocol"

// cmdRule describes what a command accepts (in the manner of nbdkit's
// validate_request and gonbdserver's CmdTypeMap).
type cmdRule struct {
	flags      protocol.CmdFlag // flags allowed besides FUA
	ranged     bool             // offset and length must lie inside the export
	nonEmpty   bool             // length 0 is EINVAL
	payload    bool             // length bytes of payload follow the header
	bounded    bool             // length must not exceed the maximum request size
	writes     bool             // refused on a read-only export
	known      bool
	outOfRange protocol.Errno // errno for a range past the end
}

// cmdRules is indexed by command; commands not listed are unknown.
var cmdRules = [...]cmdRule{
	protocol.CmdRead:        {known: true, flags: protocol.CmdFlagDF, ranged: true, nonEmpty: true, bounded: true, outOfRange: protocol.EINVAL},
	protocol.CmdWrite:       {known: true, ranged: true, nonEmpty: true, payload: true, bounded: true, writes: true, outOfRange: protocol.ENOSPC},
	protocol.CmdFlush:       {known: true},
	protocol.CmdTrim:        {known: true, ranged: true, nonEmpty: true, writes: true, outOfRange: protocol.EINVAL},
	protocol.CmdCache:       {known: true, ranged: true, outOfRange: protocol.EINVAL},
	protocol.CmdWriteZeroes: {known: true, flags: protocol.CmdFlagNoHole | protocol.CmdFlagFastZero, ranged: true, nonEmpty: true, writes: true, outOfRange: protocol.ENOSPC},
	protocol.CmdBlockStatus: {known: true, flags: protocol.CmdFlagReqOne, ranged: true, nonEmpty: true, outOfRange: protocol.EINVAL},
}

// validate checks a request against the export before anything is
// allocated for it (proto.md "Request types" and "Error values"). It
// returns nil for a valid request, a *requestError to answer, or a
// protocolError for a WRITE whose payload is too large to skip: above
// both the maximum payload and 32 MiB, the length the spec says is never
// to be taken for a denial of service (proto.md "Size constraints").
// Below that, a WRITE over the maximum is answered with EINVAL and its
// payload is read and dropped: a client that never asked for the block
// size constraints must get a clean error.
func validate(req protocol.Request, exp *openExport, maxPayload uint32, structured, metaBase bool) error {
	var rule cmdRule
	if int(req.Type) < len(cmdRules) {
		rule = cmdRules[req.Type]
	}
	if !rule.known {
		return reject(protocol.EINVAL, "unknown command %v", req.Type)
	}
	if rule.payload && req.Length > max(maxPayload, protocol.DefaultMaxPayload) {
		return violation("%v of %d bytes exceeds the maximum of %d", req.Type, req.Length, maxPayload)
	}
	if bad := req.Flags &^ (rule.flags | protocol.CmdFlagFUA); bad != 0 {
		return reject(protocol.EINVAL, "%v does not take flags %v", req.Type, bad)
	}
	if req.Flags&protocol.CmdFlagDF != 0 && !structured {
		return reject(protocol.EINVAL, "NBD_CMD_FLAG_DF without structured replies")
	}
	if req.Flags&protocol.CmdFlagFastZero != 0 && req.Flags&protocol.CmdFlagNoHole != 0 {
		// Allowed by the spec, but zeroing while keeping the range
		// allocated is never faster than writing zeroes here.
		return reject(protocol.ENOTSUP, "FAST_ZERO with NO_HOLE is not fast")
	}
	if req.Type == protocol.CmdBlockStatus && !metaBase {
		return reject(protocol.EINVAL, "NBD_CMD_BLOCK_STATUS without a meta context")
	}
	if rule.writes && exp.readOnly {
		return reject(protocol.EPERM, "%v on a read-only export", req.Type)
	}
	if req.Type == protocol.CmdTrim && exp.trimmer == nil {
		return reject(protocol.EINVAL, "NBD_CMD_TRIM is not supported by this export")
	}
	if rule.nonEmpty && req.Length == 0 {
		return reject(protocol.EINVAL, "%v of length 0", req.Type)
	}
	if rule.bounded && req.Length > maxPayload {
		return reject(protocol.EINVAL, "%v of %d bytes exceeds the maximum of %d", req.Type, req.Length, maxPayload)
	}
	if rule.ranged && (req.Offset > exp.size || uint64(req.Length) > exp.size-req.Offset) {
		return reject(rule.outOfRange, "%v at %d+%d past the end (%d)", req.Type, req.Offset, req.Length, exp.size)
	}
	return nil
}
