package server

import "github.com/nbdd/nbdd/protocol"

// cmdRule describes what a command accepts (in the manner of nbdkit's
// validate_request and gonbdserver's CmdTypeMap).
type cmdRule struct {
	flags      protocol.CmdFlag // flags allowed besides FUA
	ranged     bool             // offset and length must lie inside the export
	nonEmpty   bool             // length 0 is EINVAL
	payload    bool             // its data is a payload: NBD_CMD_FLAG_PAYLOAD_LEN under extended headers
	bounded    bool             // length must not exceed the maximum request size
	writes     bool             // refused on a read-only export
	aligned    bool             // offset and length must be multiples of the minimum block size
	known      bool
	outOfRange protocol.Errno // errno for a range past the end
}

// cmdRules is indexed by command; commands not listed are unknown.
var cmdRules = [...]cmdRule{
	protocol.CmdRead:        {known: true, flags: protocol.CmdFlagDF, ranged: true, nonEmpty: true, bounded: true, aligned: true, outOfRange: protocol.EINVAL},
	protocol.CmdWrite:       {known: true, ranged: true, nonEmpty: true, payload: true, bounded: true, writes: true, aligned: true, outOfRange: protocol.ENOSPC},
	protocol.CmdFlush:       {known: true},
	protocol.CmdTrim:        {known: true, ranged: true, nonEmpty: true, writes: true, outOfRange: protocol.EINVAL},
	protocol.CmdCache:       {known: true, ranged: true, outOfRange: protocol.EINVAL},
	protocol.CmdWriteZeroes: {known: true, flags: protocol.CmdFlagNoHole | protocol.CmdFlagFastZero, ranged: true, nonEmpty: true, writes: true, outOfRange: protocol.ENOSPC},
	protocol.CmdBlockStatus: {known: true, flags: protocol.CmdFlagReqOne, ranged: true, nonEmpty: true, outOfRange: protocol.EINVAL},
}

// validate checks a request, read in mode, against the export before
// anything is allocated for it (proto.md "Request types" and "Error
// values"). It returns nil for a valid request, a *requestError to answer
// (the caller drops the request's payload first, mode.PayloadLength
// bytes), or a protocolError for a payload too large to skip: above both
// the maximum payload and 32 MiB, the length the spec says is never to be
// taken for a denial of service (proto.md "Size constraints"; extended
// "Request message": a hard disconnect). Below that, a WRITE over the
// maximum is answered with EINVAL and its payload is read and dropped: a
// client that never asked for the block size constraints must get a clean
// error.
//
// With extended headers a WRITE may carry NBD_CMD_FLAG_PAYLOAD_LEN (the
// spec says it must; qemu 10 sends it without, and its length is the
// payload's either way: protocol.Mode.PayloadLength), and no other
// command may: nbdd documents no other payload (it does not advertise
// NBD_FLAG_BLOCK_STATUS_PAYLOAD), so such a request is answered EINVAL
// once its payload is consumed. Effect lengths are 64-bit
// and bounded only by the export's end, except a READ's.
func validate(req protocol.ExtendedRequest, exp *openExport, maxPayload uint32, mode protocol.Mode, metaBase bool) error {
	if n := mode.PayloadLength(req); n > uint64(max(maxPayload, protocol.DefaultMaxPayload)) {
		return violation("%v with a payload of %d bytes exceeds the maximum of %d", req.Type, n, maxPayload)
	}
	var rule cmdRule
	if int(req.Type) < len(cmdRules) {
		rule = cmdRules[req.Type]
	}
	if !rule.known {
		return reject(protocol.EINVAL, "unknown command %v", req.Type)
	}
	allowed := rule.flags | protocol.CmdFlagFUA
	if mode == protocol.ModeExtended && rule.payload {
		allowed |= protocol.CmdFlagPayloadLen
	}
	if bad := req.Flags &^ allowed; bad != 0 {
		return reject(protocol.EINVAL, "%v does not take flags %v", req.Type, bad)
	}
	if req.Flags&protocol.CmdFlagDF != 0 && mode < protocol.ModeStructured {
		return reject(protocol.EINVAL, "NBD_CMD_FLAG_DF without structured replies")
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
	// No payload is left that carries an effect length of its own (the
	// flags above): the header's length is the effect length.
	n, _ := mode.EffectLength(req)
	if rule.nonEmpty && n == 0 {
		return reject(protocol.EINVAL, "%v of length 0", req.Type)
	}
	if rule.bounded && n > uint64(maxPayload) {
		return reject(protocol.EINVAL, "%v of %d bytes exceeds the maximum of %d", req.Type, n, maxPayload)
	}
	if rule.ranged && (req.Offset > exp.size || n > exp.size-req.Offset) {
		return reject(rule.outOfRange, "%v at %d+%d past the end (%d)", req.Type, req.Offset, n, exp.size)
	}
	if err := checkFastZero(req, exp); err != nil {
		return err
	}
	if rule.aligned && !alignedTo(req, exp.minBlock) {
		// A client that did not ask for the block size constraints (the
		// kernel's never does) must get a clean error, not a READ cut off
		// part way or a WRITE done in part (proto.md "Size constraints").
		return reject(protocol.EINVAL, "%v at %d+%d is not aligned to the minimum block size %d", req.Type, req.Offset, req.Length, exp.minBlock)
	}
	return nil
}

// checkFastZero refuses NBD_CMD_FLAG_FAST_ZERO where it cannot be
// honoured: EINVAL when the export did not advertise it (proto.md
// "NBD_CMD_WRITE_ZEROES": the server SHOULD NOT fail with ENOTSUP then),
// ENOTSUP with NO_HOLE, which the spec allows but which zeroing while
// keeping the range allocated never makes faster than writing zeroes.
func checkFastZero(req protocol.ExtendedRequest, exp *openExport) error {
	if req.Flags&protocol.CmdFlagFastZero == 0 {
		return nil
	}
	if !exp.fastZero {
		return reject(protocol.EINVAL, "NBD_CMD_FLAG_FAST_ZERO was not advertised for this export")
	}
	if req.Flags&protocol.CmdFlagNoHole != 0 {
		return reject(protocol.ENOTSUP, "FAST_ZERO with NO_HOLE is not fast")
	}
	return nil
}

// alignedTo reports whether req's offset and length are multiples of
// minBlock, a power of 2 (or 0 or 1: no constraint).
func alignedTo(req protocol.ExtendedRequest, minBlock uint32) bool {
	if minBlock <= 1 {
		return true
	}
	return (req.Offset|req.Length)&uint64(minBlock-1) == 0
}
