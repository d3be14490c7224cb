package server

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
)

// op is one request in flight, from the reader through execution to the
// reply writer. Ops are recycled, so an op's buffers are reused across
// requests and a request allocates nothing of its own.
type op struct {
	c    *conn
	req  protocol.ExtendedRequest
	plan plan          // how it runs (plan.go); set by the reader
	err  *requestError // nil on success
	// buf is the request's buffer, from bufFrom; finish gives it back. A
	// streamed READ's first chunk is in it once read.
	buf     []byte
	bufFrom bufSource
	data    []byte // READ payload to send after the header
	weight  int64  // bytes held in the connection's byte gate
	start   int64  // requestClock when its header was read, for Stats' latency

	hdr    [maxReplyHeader]byte
	hdrLen int
	extra  []byte   // structured payload after hdr: error message, extents
	iov    [][]byte // a sparse READ's chunks, sent instead of hdr and data
	views  [][]byte // READ data lent by a Viewer or Lender backend, sent after hdr
	// loans pin what a Lender lent for views, until finish releases them.
	loans []backend.Loan
	// segViews indexes o.views by data segment of a sparse READ.
	segViews []int
}

// bufSource is where an op's buffer came from, so finish gives it back
// there.
type bufSource uint8

const (
	bufNone      bufSource = iota
	bufStrategy            // the connection's bufstrategy.Strategy
	bufReadSpare           // the connection's READ spare (spare.go)
)

var opPool = sync.Pool{New: func() any { return new(op) }}

func getOp() *op { return opPool.Get().(*op) }

func putOp(o *op) {
	extra, iov, views, segViews, loans := o.extra[:0], o.iov[:0], o.views[:0], o.segViews[:0], o.loans[:0]
	clear(o.iov)
	clear(o.views)
	*o = op{extra: extra, iov: iov, views: views, segViews: segViews, loans: loans}
	opPool.Put(o)
}

// lend appends the views of the n bytes at off to o.views, from the
// export's Viewer or Lender; a Lender's loan is kept for releaseLoans.
func (o *op) lend(off, n int64) error {
	exp := &o.c.exp.caps
	if exp.viewer != nil {
		var err error
		o.views, err = exp.viewer.AppendView(o.views, off, n)
		return err
	}
	views, loan, err := exp.lender.Lend(o.views, off, n)
	if err != nil {
		return err
	}
	o.views = views
	o.loans = append(o.loans, loan)
	return nil
}

// releaseLoans gives back what a Lender lent for o's reply, which is out
// or never will be.
func (o *op) releaseLoans() {
	for _, l := range o.loans {
		l.Release()
	}
	clear(o.loans)
	o.loans = o.loans[:0]
}

// fail records a request error; errors that are not yet request errors
// are mapped to an errno by Errno. It is the one place a request's error
// is set, and counted (Server.Stats).
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
	o.c.counts.failed(o.req, o.plan.data, re.errno)
}

// sendsAlone reports whether o's reply is sent by replytail.go: its data
// follows the header only as it is read or sent.
func (o *op) sendsAlone() bool { return o.err == nil && o.plan.sendsAlone() }

// replyErrno narrows errno to what proto.md "Error values" lets a reply
// to req carry: ENOTSUP only for WRITE_ZEROES with FAST_ZERO, EOVERFLOW
// only for a READ with DF. A backend's ENOTSUP or EOVERFLOW elsewhere
// becomes EINVAL.
func replyErrno(req protocol.ExtendedRequest, errno protocol.Errno) protocol.Errno {
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
func (o *op) encode(f replyFormat) {
	if !f.chunked(o.req.Type) {
		var errno protocol.Errno
		if o.err != nil {
			errno = o.err.errno
		}
		o.hdrLen = f.putSimple(o.hdr[:], errno, o.req.Cookie)
		o.extra = o.extra[:0]
		return
	}
	switch {
	case o.err != nil:
		// A human-readable message goes with the error (proto.md
		// "NBD_REPLY_TYPE_ERROR").
		o.extra = protocol.AppendErrorChunk(o.extra[:0], o.err.errno, clientMessage(o.err), false, 0)
		o.hdrLen = f.putChunk(o.hdr[:], &o.req, protocol.ReplyFlagDone, protocol.ReplyTypeError, len(o.extra))
	case len(o.iov) > 0: // sparse READ, chunks already built
	case o.req.Type == protocol.CmdRead:
		// Data the writer has yet to read (streamed) or send (sendfile)
		// may still fail, so its chunk is not final: the writer ends the
		// reply with a NONE chunk, or an error chunk (proto.md
		// "Structured reply chunk message": a server "MUST NOT mark a
		// chunk as final if there is still a possibility of detecting an
		// error before transmission of that chunk completes").
		flags := protocol.ReplyFlagDone
		if o.sendsAlone() {
			flags = 0
		}
		o.hdrLen = f.putData(o.hdr[:], &o.req, flags, o.req.Offset, int(o.req.Length))
	case o.req.Type == protocol.CmdBlockStatus: // o.extra already filled
		o.hdrLen = f.putChunk(o.hdr[:], &o.req, protocol.ReplyFlagDone, f.mode.StatusChunkType(), len(o.extra))
	default:
		o.hdrLen = f.mode.PutSuccess(o.hdr[:], o.req.Cookie, o.req.Offset)
		o.extra = o.extra[:0]
	}
}

// replyFormat writes every reply header of a connection: simple replies,
// structured reply chunks and extended ones (proto.md "Simple reply
// message", "Structured reply chunk message", "Extended reply chunk
// message"), in the form of the connection's protocol.Mode. It is chosen
// once, when the transmission phase starts.
type replyFormat struct {
	mode protocol.Mode
}

// maxReplyHeader is the largest reply header: an extended chunk header
// followed by the offset of an OFFSET_DATA chunk.
const maxReplyHeader = protocol.ExtendedChunkHeaderSize + protocol.OffsetDataHeaderSize

// chunked reports whether the reply to a command of type typ is sent as
// chunks: always with extended headers ("a simple reply MUST NOT be
// used"); under structured replies for READ and BLOCK_STATUS, whose
// replies carry payloads, while the others keep the shorter simple reply
// the spec allows ("Simple reply message").
func (f replyFormat) chunked(typ protocol.Cmd) bool {
	switch f.mode {
	case protocol.ModeExtended:
		return true
	case protocol.ModeStructured:
		return typ == protocol.CmdRead || typ == protocol.CmdBlockStatus
	}
	return false
}

// putSimple writes a simple reply and returns its length.
func (replyFormat) putSimple(b []byte, errno protocol.Errno, cookie uint64) int {
	protocol.SimpleReply{Error: errno, Cookie: cookie}.Put(b)
	return protocol.SimpleReplySize
}

// putChunk writes the header of a chunk of the reply to req whose
// payload is length bytes, and returns its length. An extended header
// carries req's offset, whatever the chunk.
func (f replyFormat) putChunk(b []byte, req *protocol.ExtendedRequest, flags protocol.ReplyFlag, typ protocol.ReplyType, length int) int {
	return f.mode.PutChunkHeader(b, protocol.ExtendedChunkHeader{Flags: flags, Type: typ, Cookie: req.Cookie, Offset: req.Offset, Length: uint64(length)})
}

// putData writes the header and offset of an OFFSET_DATA chunk of the
// reply to req, of n bytes of data at off, and returns their length.
func (f replyFormat) putData(b []byte, req *protocol.ExtendedRequest, flags protocol.ReplyFlag, off uint64, n int) int {
	k := f.putChunk(b, req, flags, protocol.ReplyTypeOffsetData, protocol.OffsetDataHeaderSize+n)
	binary.BigEndian.PutUint64(b[k:], off)
	return k + protocol.OffsetDataHeaderSize
}
