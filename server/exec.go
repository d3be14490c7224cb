package server

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nbdd/nbdd/backend"
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
	o.fail(err) // logged when the op finishes (logIfFailed)
	o.encode(c.format)
}

// read reads o's data as its plan says: lent by the backend, left to the
// reply writer (sendfile, or a stream that found no buffer), or read into
// o's buffer, whole or its first chunk. Nothing of the reply is sent
// before the data is in hand, except where the plan sends it alone
// (replytail.go).
func (c *conn) read(ctx context.Context, o *op) error {
	off, n := int64(o.req.Offset), int(o.req.Length)
	switch o.plan.data {
	case PathReadLent:
		if o.plan.holes == askHoles {
			if sparse, err := c.readSparse(o, true); sparse {
				return err
			}
		}
		o.views = o.views[:0]
		return o.lend(off, int64(n))
	case PathReadSendfile:
		if o.plan.holes == noHoles {
			return nil // the reply writer sends it (replytail.go)
		}
		// The reader, which must not wait, left the hole lookup to
		// this goroutine.
		holes := !c.allData(off, int64(n))
		if holes {
			if buf, err := c.bufs.TryGet(n); err == nil { // else the READ spare
				o.buf, o.bufFrom = buf, bufStrategy
			}
		}
		c.replan(o, o.plan.lookedUp(holes, n, len(o.buf)))
		if !holes {
			return nil
		}
	}
	if o.buf == nil && o.plan.run == onGoroutine { // the strategy had no room
		buf, err := c.spares.takeRead(ctx, c.srv)
		if err != nil {
			return err
		}
		o.buf, o.bufFrom = buf[:min(len(buf), n)], bufReadSpare
	}
	if o.plan.data == PathReadStreamed {
		// The first chunk is read here, so that an early failure still
		// gets a proper error reply, and a slow backend under a READ on
		// a goroutine of its own holds back none of the other replies.
		// Without a buffer the writer streams it all through its spare.
		if o.buf == nil {
			return nil
		}
		return readFull(c.exp.Backend, o.buf, off)
	}
	if o.plan.holes == askHoles {
		if sparse, err := c.readSparse(o, false); sparse {
			return err
		}
	}
	if err := readFull(c.exp.Backend, o.buf, off); err != nil {
		return err
	}
	o.data = o.buf
	return nil
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
func (c *conn) zero(req protocol.ExtendedRequest) error {
	off, n := int64(req.Offset), int64(req.Length)
	noHole := req.Flags&protocol.CmdFlagNoHole != 0
	fast := req.Flags&protocol.CmdFlagFastZero != 0
	if c.exp.zeroer != nil && (!fast || c.exp.fastZero) {
		return c.exp.zeroer.WriteZeroes(off, n, noHole, fast)
	}
	if fast {
		return backend.ErrNotFast
	}
	return backend.WriteZeroesAt(c.exp.Backend, off, n)
}
