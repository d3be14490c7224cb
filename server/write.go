package server

import (
	"context"
	"fmt"

	"github.com/nbdd/nbdd/protocol"
)

// reserve takes o's payload bytes from the connection's byte gate, so the
// reader stops reading the socket while too many bytes are in flight.
func (c *conn) reserve(ctx context.Context, o *op) error {
	n := int64(o.req.Length)
	if limit := c.srv.bufs.ChunkLimit(); limit > 0 {
		n = min(n, int64(limit))
	}
	w, ok := c.bytes.tryAcquire(n)
	if !ok {
		c.release() // held replies may hold the bytes it waits for
		var err error
		if w, err = c.bytes.acquire(ctx, n); err != nil {
			return err
		}
	}
	o.weight = w
	return nil
}

// startWrite reads a validated WRITE's payload and starts it. A backend
// that never blocks is written in place (inplace.go). Otherwise the payload
// goes into a buffer from the strategy, or, when the strategy hands out a
// buffer smaller than the payload, it is streamed into the backend chunk
// by chunk on this goroutine.
func (c *conn) startWrite(ctx context.Context, o *op) error {
	if c.writesInPlace(o) {
		return c.writeInPlace(o)
	}
	n := int(o.req.Length)
	if err := c.reserve(ctx, o); err != nil {
		c.finish(o)
		return err
	}
	buf, err := c.bufs.Get(ctx, n)
	if mustStream(err) {
		return c.streamWrite(o, c.spare(&c.readerSpare), false)
	}
	if err != nil {
		c.finish(o)
		return fmt.Errorf("buffer for %d-byte write: %w", n, err)
	}
	if len(buf) < n {
		return c.streamWrite(o, buf, true)
	}
	o.buf, o.path = buf, PathWriteBuffered
	c.releaseUnlessBuffered(n)
	if err := c.readPayload(buf); err != nil {
		c.finish(o)
		return fmt.Errorf("read write payload: %w", err)
	}
	c.start(ctx, o)
	return nil
}

// spareSize is the connection's own fallback buffer, used when the memory
// budget has no room: small enough that every connection may have one
// (MaxConns bounds them), large enough to stream at a useful rate.
const spareSize = 64 << 10

// spare returns the buffer in *p, allocating it on first use. Each
// goroutine that streams (the reader for WRITEs, the writer for READs run
// inline) has its own, and READs on their own goroutines share a third
// (conn.takeReadSpare).
func (c *conn) spare(p *[]byte) []byte {
	if *p == nil {
		*p = make([]byte, spareSize)
	}
	return *p
}

// streamWrite copies a WRITE payload from the socket to the backend one
// chunk at a time, or splices it into a file export (splice.go): either
// way on the reader, as streaming does. After a backend error the rest of the payload is still
// read, so the stream stays in sync and the client gets the error.
func (c *conn) streamWrite(o *op, chunk []byte, fromStrategy bool) error {
	if fromStrategy {
		defer c.bufs.Put(chunk)
	}
	if c.splices(o) {
		return c.writeInPlace(o) // no chunk needed
	}
	o.path = PathWriteStreamed
	c.releaseUnlessBuffered(int(o.req.Length))
	off := int64(o.req.Offset)
	var werr error
	for left := int(o.req.Length); left > 0; {
		part := chunk[:min(len(chunk), left)]
		if err := c.readPayload(part); err != nil {
			c.finish(o)
			return fmt.Errorf("read write payload: %w", err)
		}
		if werr == nil {
			_, werr = c.exp.Backend.WriteAt(part, off)
		}
		off += int64(len(part))
		left -= len(part)
	}
	fua := o.req.Flags&protocol.CmdFlagFUA != 0
	if c.syncOffReader(o, werr, fua) {
		return nil
	}
	o.fail(c.afterFUA(werr, fua))
	o.encode(c.structured)
	c.w.enqueue(o)
	return nil
}
