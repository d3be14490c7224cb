package server

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// WRITE payloads the reader writes itself, as their plan says (plan.go);
// a WRITE planned PathWriteBuffered has its payload read into its buffer
// by start and runs like any other request.
//
//   - PathWriteFromReadBuffer: the payload is already in the read buffer
//     and is written from there with WriteAt: one copy, and no buffer to
//     take, fill and give back.
//   - PathWriteIntoExport: what is buffered is written as above and the
//     rest is read with readv(2) straight into the export's pages
//     (backend.WriteViewer): one copy, made by the kernel, whatever the
//     payload's size.
//   - PathWriteSpliced: what is buffered is written as above and the rest
//     spliced into the export's file through a pipe (splice.go): one copy,
//     into the page cache.
//   - PathWriteStreamed: the payload is larger than the strategy's
//     buffers, or the strategy had none: it is copied into the backend one
//     chunk at a time, through the WRITE's buffer or the reader's spare.
//
// Either way the write is complete before the next request is read. After
// a backend error the rest of the payload is still read, so the stream
// stays in step and the client gets the error; only a socket error ends
// the connection.

// writeOnReader writes o's payload as its plan says and holds its reply,
// or hands its FUA sync to a goroutine of its own (syncOnGoroutine). Only
// a socket error is returned; the connection is then out of step.
func (c *conn) writeOnReader(ctx context.Context, o *op) error {
	var werr, rerr error
	if o.plan.data == PathWriteStreamed {
		werr, rerr = c.copyIntoExport(o.buf, int64(o.req.Offset), int(o.req.Length))
	} else {
		werr, rerr = c.writeInPlace(o)
	}
	if rerr != nil {
		return rerr
	}
	fua := o.req.Flags&protocol.CmdFlagFUA != 0
	if werr == nil && o.plan.run == syncOnGoroutine {
		c.runOwn(ctx, o)
		return nil
	}
	if werr == nil && fua && o.plan.data != PathWriteFromReadBuffer {
		werr = c.exp.Backend.Sync() // forced unit access (proto.md "NBD_CMD_FLAG_FUA")
	}
	o.fail(werr)
	o.encode(c.format)
	c.hold(o)
	return nil
}

// writeInPlace writes the part of o's payload in the read buffer, then
// moves the rest from the socket into the export, with readv or splice.
// A payload wholly in the read buffer is written with its FUA (c.write);
// otherwise the caller syncs after.
func (c *conn) writeInPlace(o *op) (werr, rerr error) {
	off, n := int64(o.req.Offset), int(o.req.Length)
	k := min(n, c.br.Buffered())
	if k > 0 || n == 0 {
		head, _ := c.br.Peek(k)
		werr = c.write(head, off, k == n && o.req.Flags&protocol.CmdFlagFUA != 0)
		c.br.Discard(k)
	}
	if k == n {
		return werr, nil
	}
	c.exactHeader = n >= exactHeaderMin
	off, n = off+int64(k), n-k
	if o.plan.data == PathWriteIntoExport {
		if err := c.readIntoExport(off, n); err != nil {
			return werr, fmt.Errorf("read write payload: %w", err)
		}
		return werr, nil
	}
	swerr, rerr := c.spliceIntoExport(off, n)
	if c.noSplice { // splicing failed, and the rest was copied
		c.replan(o, o.plan.spliceFailed())
	}
	if werr == nil {
		werr = swerr
	}
	return werr, rerr
}

// exactHeaderMin is the smallest WRITE whose payload, once taken from the
// socket by the kernel, has the next header read alone (headerSource):
// the request's length, not what was left in the socket, predicts the
// next request's. After a smaller one, the next header is read through
// the read buffer, which brings in the next small payload with it:
// copying a few KiB from the buffer costs far less than the system call
// it saves (4 KiB random writes made three system calls each, not two: a
// header, a readv, a writev).
const exactHeaderMin = readBufferSize / 2

// readIntoExport reads n bytes from the socket into the export at off.
func (c *conn) readIntoExport(off int64, n int) error {
	wv := c.exp.writeViewer
	defer wv.CommitWriteView(off, int64(n))
	iov, err := wv.AppendWriteView(c.inIov[:0], off, int64(n))
	defer func() {
		clear(iov)
		c.inIov = iov[:0]
	}()
	if err != nil {
		return err // validated already: only a broken backend gets here
	}
	c.payloadClock()
	return c.src.readv(iov)
}

// copyIntoExport reads n payload bytes through buf, or the reader's spare
// if buf is nil, and writes them to the export at off. After a backend
// error (werr) it still reads all n bytes; it stops early only when the
// socket fails (rerr).
func (c *conn) copyIntoExport(buf []byte, off int64, n int) (werr, rerr error) {
	werr, rerr = c.copyChunks(buf, c.readPayload, off, n)
	if rerr != nil {
		rerr = fmt.Errorf("read write payload: %w", rerr)
	}
	return werr, rerr
}

// copyChunks copies n bytes, read with read, to the export at off through
// buf (the reader's spare if nil).
func (c *conn) copyChunks(buf []byte, read func([]byte) error, off int64, n int) (werr, rerr error) {
	if buf == nil {
		buf = c.spares.forReader()
	}
	for n > 0 {
		part := buf[:min(len(buf), n)]
		if err := read(part); err != nil {
			return werr, err
		}
		if werr == nil {
			werr = c.write(part, off, false)
		}
		off += int64(len(part))
		n -= len(part)
	}
	return werr, nil
}

// A WRITE's payload is read under the idle timeout too: without it, a
// client that sends a WRITE header and stops part way through the payload
// would keep its connection, its buffer and its share of the budget for
// good, though it is as idle as one that sends nothing. The deadline
// bounds how long the client sends nothing, not how long the payload
// takes, nor how long the server itself takes between reads (waiting for
// a queue slot, writing a chunk to a slow disk): every read of the
// payload from the socket starts the clock afresh just before it may
// wait (payloadClock), and readv and splice start it again whenever the
// socket runs dry (vecIO.onBlock, pipeIn.onBlock).

// payloadClock gives the client IdleTimeout from now to send more of a
// payload, when Server.IdleTimeout is set. handle clears the deadline
// once the payload is read (endPayloadClock).
func (c *conn) payloadClock() {
	if c.srv.IdleTimeout <= 0 || c.nc == nil {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(c.srv.IdleTimeout))
	c.payloadArmed = true
}

// endPayloadClock clears a deadline payloadClock set.
func (c *conn) endPayloadClock() {
	if c.payloadArmed {
		c.nc.SetReadDeadline(time.Time{})
		c.payloadArmed = false
	}
}

// readPayload fills buf with payload bytes from the read buffer. Under
// the idle timeout it reads with one Read (at most one read(2)) at a time,
// starting the clock before each, so a client that keeps sending, however
// slowly, is never cut off.
func (c *conn) readPayload(buf []byte) error {
	if c.srv.IdleTimeout <= 0 {
		_, err := io.ReadFull(c.br, buf)
		return err
	}
	for len(buf) > 0 {
		c.payloadClock()
		n, err := c.br.Read(buf)
		buf = buf[n:]
		switch {
		case len(buf) == 0:
		case err == io.EOF:
			return io.ErrUnexpectedEOF
		case err != nil:
			return err
		}
	}
	return nil
}

// discardPayload reads and drops n payload bytes, as readPayload reads.
func (c *conn) discardPayload(n int) error {
	if c.srv.IdleTimeout <= 0 {
		_, err := c.br.Discard(n)
		return err
	}
	for n > 0 {
		if c.br.Buffered() == 0 {
			c.payloadClock()
			if _, err := c.br.Peek(1); err != nil { // one read(2) into the buffer
				return err
			}
		}
		k, _ := c.br.Discard(min(n, c.br.Buffered()))
		n -= k
	}
	return nil
}
