package server

import (
	"errors"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
)

// baseAllocationID is the context ID nbdd gives base:allocation.
const baseAllocationID = 1

// maxExtents bounds the descriptors of one BLOCK_STATUS reply; clients
// ask again for the rest (proto.md "NBD_CMD_BLOCK_STATUS": the server may
// return fewer extents than the range needs).
const maxExtents = 1024

// optMetaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT (proto.md "Metadata querying"). nbdd knows one
// context, base:allocation; queries in other namespaces are ignored.
func (c *conn) optMetaContext(opt protocol.Opt, data []byte) error {
	set := opt == protocol.OptSetMetaContext
	if set {
		// SET replaces the selection even when it fails.
		c.metaBase, c.metaExport = false, ""
	}
	if set && c.mode < protocol.ModeStructured {
		return c.optReply(opt, protocol.RepErrInvalid, "structured replies must be negotiated first")
	}
	req, err := protocol.DecodeMetaContextRequest(data)
	if errors.Is(err, protocol.ErrTooManyQueries) {
		return c.optReply(opt, protocol.RepErrTooBig, err.Error())
	}
	if err != nil {
		return c.optReply(opt, protocol.RepErrInvalid, err.Error())
	}
	exp, err := c.openExport(req.Name)
	if err != nil || exp == nil {
		return c.optReply(opt, protocol.RepErrUnknown, "unknown export")
	}
	if exp.close != nil {
		exp.close()
	}
	// Without structured replies no context can be selected, so LIST
	// offers none ("the contexts available to the client to select").
	match := matchesBaseAllocation(req.Queries, set) && !c.srv.NoStructuredReplies
	id := uint32(0) // LIST's replies carry no ID ("reserved, SHOULD be zero")
	if set {
		c.metaBase, c.metaExport, id = match, exp.Name, baseAllocationID
	}
	if match {
		c.replyBuf = protocol.AppendMetaContext(c.replyBuf[:0], id, protocol.MetaContextBaseAllocation)
		if err := c.optReplyData(opt, protocol.RepMetaContext, c.replyBuf); err != nil {
			return err
		}
	}
	return c.optReply(opt, protocol.RepAck, "")
}

// selectMetaFor keeps the contexts selected with SET only if exp is the
// export they were selected for: a client MUST NOT use BLOCK_STATUS
// otherwise (proto.md "NBD_CMD_BLOCK_STATUS"), and nbdd then answers it
// with EINVAL, as nbdkit and qemu-nbd do.
func (c *conn) selectMetaFor(exp *openExport) {
	if c.metaExport != exp.Name {
		c.metaBase = false
	}
}

// matchesBaseAllocation reports whether the queries select base:allocation.
// LIST with no queries lists every context, and LIST accepts the
// namespace wildcard "base:"; SET needs the exact name.
func matchesBaseAllocation(queries []string, set bool) bool {
	if len(queries) == 0 {
		return !set
	}
	for _, q := range queries {
		if q == protocol.MetaContextBaseAllocation || (!set && q == "base:") {
			return true
		}
	}
	return false
}

// blockStatus fills o.extra with the base:allocation extents of the
// requested range (proto.md "NBD_CMD_BLOCK_STATUS"), as the payload of an
// NBD_REPLY_TYPE_BLOCK_STATUS chunk, or with extended headers of a
// BLOCK_STATUS_EXT one, whose 64-bit extents let one reply cover any
// range. Backends that cannot tell report one allocated extent.
func (c *conn) blockStatus(o *op) error {
	mode := c.mode
	off, n := int64(o.req.Offset), int64(o.req.Length)
	limit := maxExtents
	if o.req.Flags&protocol.CmdFlagReqOne != 0 {
		limit = 1
	}
	b := mode.AppendStatusHeader(o.extra[:0], baseAllocationID)
	if c.exp.extenter == nil {
		o.extra = mode.AppendBlockDescriptor(b, uint64(n), 0)
		mode.FinishStatus(o.extra)
		return nil
	}
	// A backend may report one run in pieces (Extenter asks it not to):
	// they go out as one descriptor, so REQ_ONE's answer covers the run.
	count := 0
	err := backend.WalkExtents(c.exp.extenter, off, n, stateKey, func(e backend.Extent) bool {
		if count == limit {
			return false
		}
		b = mode.AppendBlockDescriptor(b, uint64(e.Length), stateFlags(e.Flags))
		count++
		return true
	})
	if err == nil && count == 0 {
		b = mode.AppendBlockDescriptor(b, uint64(n), 0)
	}
	o.extra = b
	mode.FinishStatus(o.extra)
	return err
}

// stateKey merges extents by the base:allocation state they report.
func stateKey(f backend.ExtentFlags) backend.ExtentFlags {
	return f & (backend.ExtentHole | backend.ExtentZero)
}

func stateFlags(f backend.ExtentFlags) uint32 {
	var s uint32
	if f&backend.ExtentHole != 0 {
		s |= protocol.StateHole
	}
	if f&backend.ExtentZero != 0 {
		s |= protocol.StateZero
	}
	return s
}
