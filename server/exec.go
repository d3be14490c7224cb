package server

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
)

// exec runs a validated request against the backend and encodes its reply.
func (c *conn) exec(ctx context.Context, o *op) {
	var err error
	off, n := int64(o.req.Offset), int64(o.req.Length)
	fua := o.req.Flags&protocol.CmdFlagFUA != 0
	switch o.req.Type {
	case protocol.CmdRead:
		err = c.read(ctx, o)
	case protocol.CmdWrite:
		err = c.write(o.buf, off, fua)
	case protocol.CmdFlush:
		err = c.exp.Backend.Sync()
	case protocol.CmdTrim:
		err = c.afterFUA(c.exp.trimmer.Trim(off, n), fua)
	case protocol.CmdWriteZeroes:
		err = c.afterFUA(c.zero(o.req), fua)
	case protocol.CmdCache:
		if c.exp.cacher != nil {
			err = c.exp.cacher.Cache(off, n)
		}
	case protocol.CmdBlockStatus:
		err = c.blockStatus(o)
	}
	o.fail(err) // logged when the op finishes (conn.count)
	o.encode(c.structured)
}

// read fills o's buffer from the backend. A READ larger than the buffers
// the strategy hands out is marked for streaming, which the reply writer
// does itself; nothing of the reply is sent before data is in hand.
func (c *conn) read(ctx context.Context, o *op) error {
	if c.viewable(o) {
		if sparse, err := c.readSparse(o, true); sparse {
			return err
		}
		var err error
		o.views, err = c.exp.viewer.AppendView(o.views[:0], int64(o.req.Offset), int64(o.req.Length))
		return err
	}
	if c.sendsFile(o) {
		o.sendfile = true
		return nil
	}
	n := int(o.req.Length)
	buf, err := c.bufs.Get(ctx, n)
	if mustStream(err) {
		if !o.ownGoroutine {
			o.stream = true // the writer streams it through its own buffer
			return nil
		}
		if buf, err = c.takeReadSpare(ctx); err != nil {
			return err
		}
		buf, o.spare = buf[:min(len(buf), n)], true
	}
	if err != nil {
		return err
	}
	o.buf = buf
	if len(buf) < n {
		// Streamed: the first chunk is read here, on the request's own
		// goroutine, so a slow backend does not hold the reply writer (and
		// every other reply) before anything can be sent.
		if err := readFull(c.exp.Backend, buf, int64(o.req.Offset)); err != nil {
			return err
		}
		o.stream, o.firstRead = true, true
		return nil
	}
	if sparse, err := c.readSparse(o, false); sparse {
		return err
	}
	if err := readFull(c.exp.Backend, buf, int64(o.req.Offset)); err != nil {
		return err
	}
	o.data = buf
	return nil
}

// takeReadSpare waits for the connection's READ spare, the buffer a READ
// on its own goroutine uses when the budget has no room, so that it still
// reads its first chunk here rather than on the reply writer: a slow
// backend read there would hold back every other reply of the connection.
// It gives up its turn at the backend (Server.MaxBackendCalls) while it
// waits, so a connection stalled on a client that does not read holds no
// turns. The spare goes back to the connection in finish.
func (c *conn) takeReadSpare(ctx context.Context) ([]byte, error) {
	var b []byte
	select {
	case b = <-c.readSpare:
	default:
		c.srv.releaseCall()
		select {
		case b = <-c.readSpare:
		case <-ctx.Done():
			c.srv.acquireCall()
			return nil, ctx.Err()
		}
		c.srv.acquireCall()
	}
	if b == nil {
		b = make([]byte, spareSize)
	}
	return b, nil
}

// viewable reports whether o's data can be sent straight from the
// backend's memory: the backend lends it and the kernel copies it (a plain
// socket, not TLS or net.Pipe, whose Go copy would race with writes).
func (c *conn) viewable(o *op) bool {
	return c.exp.viewer != nil && c.kernelCopies
}

// lendsReads reports whether READs of the export are sent without a copy
// in user space: from a Viewer's pages, or from its file with sendfile.
func (c *conn) lendsReads() bool {
	return c.kernelCopies && (c.exp.viewer != nil || c.exp.file != nil)
}

// sendfileMin is the smallest READ sent with sendfile(2). Below it, a
// pread into a pooled buffer and a writev shared with the replies around
// it cost less than the two system calls of a header and a sendfile.
const sendfileMin = 64 << 10

// sendsFile reports whether READ o goes from the export's file straight
// to the socket with sendfile(2): no buffer, and no copy in user space,
// the file counterpart of a Viewer's lent pages. It needs a plain socket,
// a READ of at least sendfileMin, a range wholly in the page cache (always
// so for a file in memory), so that sendfile waits on no disk while it
// holds the socket and meets no bad sector after the header is out, and,
// when the reply may be sparse, no hole in the range: holes go out as
// OFFSET_HOLE chunks through the buffered path. A sendfile that fails
// after the header is out (the file shrank under the export, or pages
// evicted since the check met a disk error) can only end in a disconnect,
// as for streamed READs.
func (c *conn) sendsFile(o *op) bool {
	off, n := int64(o.req.Offset), int64(o.req.Length)
	if c.exp.file == nil || !c.kernelCopies || n < sendfileMin || !c.exp.file.Cached(off, n) {
		return false
	}
	if !c.mayBeSparse(o) {
		return true
	}
	segs, err := c.segments(off, n)
	return err == nil && len(segs) == 1 && !segs[0].hole
}

// mustStream reports whether a Get failed for want of room rather than for
// a broken connection: the budget is full, or the strategy was configured
// for smaller requests than the server accepts. The request then streams
// through the connection's own buffer.
func mustStream(err error) bool {
	return errors.Is(err, bufstrategy.ErrBudgetExhausted) || errors.Is(err, bufstrategy.ErrRequestSize)
}

// readFull reads len(p) bytes at off. io.ReaderAt allows io.EOF with a
// full count at the end of the data; that is success.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("short read at %d: %d of %d bytes: %w", off, n, len(p), io.ErrUnexpectedEOF)
	}
	return err
}

func (c *conn) write(p []byte, off int64, fua bool) error {
	if fua && c.exp.fua != nil {
		_, err := c.exp.fua.WriteAtFUA(p, off)
		return err
	}
	n, err := c.exp.Backend.WriteAt(p, off)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return c.afterFUA(err, fua)
}

// syncOffReader takes over a WRITE the reader wrote itself (streamed or
// spliced) when its FUA sync is due and may wait: the sync runs on a
// goroutine of its own, which then replies, so a write-back never holds
// up the reader and the requests behind it. It reports whether it did;
// otherwise the reader finishes o (with afterFUA).
func (c *conn) syncOffReader(o *op, err error, fua bool) bool {
	if err != nil || !fua || c.exp.nonBlocking && !c.exp.syncWaits {
		return false
	}
	c.runOwn(context.Background(), o, true) // the context is exec's; unused here
	return true
}

// afterFUA makes a successful change durable when the client asked for
// forced unit access (proto.md "NBD_CMD_FLAG_FUA").
func (c *conn) afterFUA(err error, fua bool) error {
	if err != nil || !fua {
		return err
	}
	return c.exp.Backend.Sync()
}

// zero runs NBD_CMD_WRITE_ZEROES, writing zeroes where the backend has no
// faster way. With FAST_ZERO that fallback is refused with ENOTSUP
// (proto.md "NBD_CMD_FLAG_FAST_ZERO").
func (c *conn) zero(req protocol.Request) error {
	off, n := int64(req.Offset), int64(req.Length)
	noHole := req.Flags&protocol.CmdFlagNoHole != 0
	fast := req.Flags&protocol.CmdFlagFastZero != 0
	if c.exp.zeroer != nil && (!fast || c.exp.fastZero) {
		return c.exp.zeroer.WriteZeroes(off, n, noHole, fast)
	}
	if fast {
		return backend.ErrNotFast
	}
	return writeZeroes(c.exp.Backend, off, n)
}

// zeroes is a read-only source of zero bytes for emulated WRITE_ZEROES.
var zeroes [1 << 20]byte

func writeZeroes(w io.WriterAt, off, n int64) error {
	for n > 0 {
		chunk := zeroes[:min(n, int64(len(zeroes)))]
		if _, err := w.WriteAt(chunk, off); err != nil {
			return err
		}
		off += int64(len(chunk))
		n -= int64(len(chunk))
	}
	return nil
}
