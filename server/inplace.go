package server

import (
	"fmt"

	"github.com/nbdd/nbdd/protocol"
)

// WRITEs to backends that never block are done on the reader without a
// buffer from the strategy: the payload goes from the read buffer, or from
// the socket itself, into the export.
//
//   - A payload already in the read buffer is written from there with
//     WriteAt: one copy, and no buffer to take, fill and give back.
//   - Otherwise, when the backend lends its memory (backend.WriteViewer)
//     and the connection is a plain socket, what is buffered is written as
//     above and the rest is read with readv(2) straight into the export's
//     pages: one copy, made by the kernel, whatever the payload's size.
//   - Otherwise, when the backend is a file (backend.PipeWriter), a large
//     payload is spliced into it through a pipe (splice.go): one copy, into
//     the page cache.
//
// Either way the write is complete before the next request is read, like
// the inline requests of start.

// writesInPlace reports whether o's payload can be written without a
// buffer.
func (c *conn) writesInPlace(o *op) bool {
	if !c.exp.nonBlocking || c.exp.syncWaits && syncs(o.req) {
		return false
	}
	if int(o.req.Length) <= c.br.Buffered() {
		return true
	}
	return c.exp.writeViewer != nil && c.in != nil || c.splices(o)
}

// writeInPlace writes o's payload into the export and holds its reply. Only
// a socket error is returned; the connection is then out of step.
func (c *conn) writeInPlace(o *op) error {
	off, n := int64(o.req.Offset), int(o.req.Length)
	fua := o.req.Flags&protocol.CmdFlagFUA != 0
	k := min(n, c.br.Buffered())
	switch {
	case k == n:
		o.path = PathWriteFromReadBuffer
	case c.exp.writeViewer != nil:
		o.path = PathWriteIntoExport
	default:
		o.path = PathWriteSpliced
	}
	var err error
	if k > 0 || n == 0 {
		head, _ := c.br.Peek(k)
		err = c.write(head, off, fua && k == n)
		c.br.Discard(k)
	}
	if k < n {
		c.release() // about to wait for the client
		c.exactHeader = n >= exactHeaderMin
		werr, rerr := c.payloadIntoExport(off+int64(k), n-k)
		if o.path == PathWriteSpliced && c.noSplice {
			o.path = PathWriteStreamed // splicing failed: copied
		}
		if rerr != nil {
			c.finish(o)
			return rerr
		}
		if err == nil && c.syncOffReader(o, werr, fua) {
			return nil
		}
		if err == nil {
			err = c.afterFUA(werr, fua)
		}
	}
	o.fail(err)
	o.encode(c.structured)
	c.hold(o)
	return nil
}

// exactHeaderMin is the smallest WRITE whose payload, once taken from the
// socket by the kernel, has the next header read alone (headerSource):
// the request's length, not what was left in the socket, predicts the
// next request's. After
// a smaller one, the next header is read through the read buffer, which
// brings in the next small payload with it: copying a few KiB from the
// buffer costs far less than the system call it saves (4 KiB random
// writes made three system calls each, not two: a header, a readv, a
// writev).
const exactHeaderMin = readBufferSize / 2

// payloadIntoExport moves the next n payload bytes from the socket into
// the export at off: with readv into its memory, or with splice into its
// file. A backend error (werr) leaves the stream in step; a socket error
// (rerr) does not.
func (c *conn) payloadIntoExport(off int64, n int) (werr, rerr error) {
	if c.exp.writeViewer == nil {
		return c.spliceIntoExport(off, n)
	}
	if err := c.readIntoExport(off, n); err != nil {
		return nil, fmt.Errorf("read write payload: %w", err)
	}
	return nil, nil
}

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
	return c.in.transfer(iov)
}
