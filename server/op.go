package server

import (
	"errors"
	"sync"

	"github.com/nbdd/nbdd/protocol"
)

// maxReplyHeader is the largest reply header: a structured chunk header
// followed by the offset of an OFFSET_DATA chunk.
const maxReplyHeader = protocol.ChunkHeaderSize + protocol.OffsetDataHeaderSize

// op is one request in flight, from the reader through execution to the
// reply writer. Ops are recycled, so an op's buffers are reused across
// requests and a request allocates nothing of its own.
type op struct {
	c      *conn
	req    protocol.Request
	err    *requestError // nil on success
	buf    []byte        // buffer from the strategy, returned after the reply
	data   []byte        // READ payload to send after the header
	weight int64         // bytes held in the connection's byte gate
	stream bool          // READ too large for one buffer: the writer streams it
	// firstRead means o.buf already holds the streamed READ's first chunk.
	firstRead bool
	// spare means buf is the connection's READ spare (conn.takeReadSpare),
	// returned to it instead of to the strategy.
	spare bool
	// ownGoroutine means the request runs on a goroutine of its own, not
	// inline on the reader.
	ownGoroutine bool
	// sendfile means the READ's data goes from the export's file to the
	// socket with sendfile(2) after the header (see conn.sendsFile).
	sendfile bool
	// path is how the request's data moved, for Server.Stats.
	path Path

	hdr    [maxReplyHeader]byte
	hdrLen int
	extra  []byte   // structured payload after hdr: error message, extents
	iov    [][]byte // a sparse READ's chunks, sent instead of hdr and data
	views  [][]byte // READ data lent by a Viewer backend, sent after hdr
	// segViews indexes o.views by data segment of a sparse READ.
	segViews []int
}

var opPool = sync.Pool{New: func() any { return new(op) }}

func getOp() *op { return opPool.Get().(*op) }

func putOp(o *op) {
	extra, iov, views, segViews := o.extra[:0], o.iov[:0], o.views[:0], o.segViews[:0]
	clear(o.iov)
	clear(o.views)
	*o = op{extra: extra, iov: iov, views: views, segViews: segViews}
	opPool.Put(o)
}

// fail records a request error; errors that are not yet request errors
// are mapped to an errno by Errno.
func (o *op) fail(err error) {
	if err == nil {
		return
	}
	var re *requestError
	if !errors.As(err, &re) {
		re = &requestError{errno: Errno(err), err: err}
	}
	if errno := replyErrno(o.req, re.errno); errno != re.errno {
		re = &requestError{errno: errno, err: err}
	}
	o.err = re
	o.data = nil
	o.iov = o.iov[:0]
	o.views = o.views[:0]
}

// replyErrno narrows errno to what proto.md "Error values" lets a reply
// to req carry: ENOTSUP only for WRITE_ZEROES with FAST_ZERO, EOVERFLOW
// only for a READ with DF. A backend's ENOTSUP or EOVERFLOW elsewhere
// becomes EINVAL.
func replyErrno(req protocol.Request, errno protocol.Errno) protocol.Errno {
	switch {
	case errno == protocol.ENOTSUP && !(req.Type == protocol.CmdWriteZeroes && req.Flags&protocol.CmdFlagFastZero != 0):
		return protocol.EINVAL
	case errno == protocol.EOVERFLOW && !(req.Type == protocol.CmdRead && req.Flags&protocol.CmdFlagDF != 0):
		return protocol.EINVAL
	}
	return errno
}

// encode builds the reply header (and structured payload) for o; the
// writer sends o.hdr[:o.hdrLen], o.extra and o.data.
func (o *op) encode(structured bool) {
	typ := o.req.Type
	if !structured || (typ != protocol.CmdRead && typ != protocol.CmdBlockStatus) {
		o.encodeSimple()
		return
	}
	switch {
	case o.err != nil:
		o.encodeErrorChunk()
	case len(o.iov) > 0: // sparse READ, chunks already built
	case typ == protocol.CmdRead:
		// Data the writer has yet to read (streamed) or send (sendfile)
		// may still fail, so its chunk is not final: the writer ends the
		// reply with a NONE chunk, or an error chunk (proto.md
		// "Structured reply chunk message": a server "MUST NOT mark a
		// chunk as final if there is still a possibility of detecting an
		// error before transmission of that chunk completes").
		flags := protocol.ReplyFlagDone
		if o.stream || o.sendfile {
			flags = 0
		}
		o.encodeChunk(flags, protocol.ReplyTypeOffsetData, uint32(protocol.OffsetDataHeaderSize+int(o.req.Length)))
		putUint64(o.hdr[protocol.ChunkHeaderSize:], o.req.Offset)
		o.hdrLen = maxReplyHeader
	default: // block status, o.extra already filled
		o.encodeChunk(protocol.ReplyFlagDone, protocol.ReplyTypeBlockStatus, uint32(len(o.extra)))
	}
}

func (o *op) encodeSimple() {
	var errno protocol.Errno
	if o.err != nil {
		errno = o.err.errno
	}
	protocol.SimpleReply{Error: errno, Cookie: o.req.Cookie}.Put(o.hdr[:])
	o.hdrLen = protocol.SimpleReplySize
	o.extra = o.extra[:0]
}

func (o *op) encodeChunk(flags protocol.ReplyFlag, typ protocol.ReplyType, length uint32) {
	protocol.ChunkHeader{Flags: flags, Type: typ, Cookie: o.req.Cookie, Length: length}.Put(o.hdr[:])
	o.hdrLen = protocol.ChunkHeaderSize
}

// encodeErrorChunk sends the error with a human-readable message
// (proto.md "NBD_REPLY_TYPE_ERROR").
func (o *op) encodeErrorChunk() {
	o.extra = protocol.AppendErrorChunk(o.extra[:0], o.err.errno, clientMessage(o.err), false, 0)
	o.encodeChunk(protocol.ReplyFlagDone, protocol.ReplyTypeError, uint32(len(o.extra)))
}

func putUint64(b []byte, v uint64) {
	_ = b[7]
	b[0], b[1], b[2], b[3] = byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32)
	b[4], b[5], b[6], b[7] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}
