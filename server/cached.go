package server

import (
	"context"

	"github.com/nbdd/nbdd/protocol"
)

// readCachedInline answers a READ of a backend that may block (a file on
// a disk) on the reader when its data is in the page cache, as the
// requests of backends that never block are answered: handing it to a
// goroutine of its own would cost more than the work, which then waits on
// no device.
//
//   - A READ of sendfileMin bytes or more whose range is cached (with no
//     holes to report) is marked for sendfile(2), which the reply writer
//     does (sendfile.go).
//   - A smaller one is read into a buffer with backend.CachedReader,
//     which gives up rather than wait for the device.
//
// It reports false, having done nothing the caller must undo, when the
// data is not all cached, the backend cannot tell, the READ is small but
// may be sparse, or the strategy has no buffer for it at once; the READ
// then runs on its own goroutine as before, which also reports any error.
func (c *conn) readCachedInline(ctx context.Context, o *op) bool {
	if o.req.Type != protocol.CmdRead || o.req.Length == 0 {
		return false
	}
	if c.sendsFile(o) {
		o.sendfile = true
		o.encode(c.structured)
		c.srv.cachedReads.Add(1)
		return true
	}
	cr := c.exp.cachedReader
	if cr == nil || o.req.Length > inlineMax || c.mayBeSparse(o) {
		return false
	}
	n := int(o.req.Length)
	buf, err := c.bufs.Get(ctx, n)
	if err != nil {
		return false
	}
	if len(buf) < n || !cr.ReadCached(buf[:n], int64(o.req.Offset)) {
		c.bufs.Put(buf)
		return false
	}
	o.buf, o.data = buf, buf[:n]
	o.encode(c.structured)
	c.srv.cachedReads.Add(1)
	return true
}
