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
//   - A READ of sendfileMin bytes or more whose range is cached is marked
//     for sendfile(2), which the reply writer does (sendfile.go). Under
//     structured replies only if its range is known to hold no holes
//     without asking the filesystem (knownData): SEEK_DATA may wait on
//     the inode lock behind a write, and the reader must not.
//   - A smaller one is read into a buffer with backend.CachedReader,
//     which gives up rather than wait for the device.
//
// It reports false, having done nothing the caller must undo, when the
// data is not all cached, the backend cannot tell, the READ is small but
// may be sparse, or the strategy has no buffer for it at once; the READ
// then runs on its own goroutine as before, which also reports any error.
func (c *conn) readCachedInline(ctx context.Context, o *op) bool {
	if o.req.Type != protocol.CmdRead || o.req.Length == 0 ||
		c.exp.file == nil && c.exp.cachedReader == nil || !c.cacheTries.try() {
		return false
	}
	tried, hit := c.sendfileCached(o)
	if !tried {
		tried, hit = c.readCached(ctx, o)
	}
	if tried { // READs it could not even try say nothing about the cache
		c.cacheTries.record(hit)
	}
	if hit {
		o.encode(c.structured)
	}
	return hit
}

// sendfileCached marks o for sendfile if its data is cached and it has
// no holes to look up; see readCachedInline. tried reports whether it
// asked the kernel.
func (c *conn) sendfileCached(o *op) (tried, hit bool) {
	if c.exp.file == nil || int64(o.req.Length) < sendfileMin || !c.kernelCopies {
		return false, false
	}
	if c.mayBeSparse(o) && !c.knownData(o) {
		return false, false
	}
	o.sendfile = c.sendsFile(o)
	if o.sendfile {
		o.path = PathReadSendfile
	}
	return true, o.sendfile
}

// knownData reports whether the export knows, without a system call,
// that o's range holds data only (backend.File.KnownData).
func (c *conn) knownData(o *op) bool {
	return c.exp.dataKnower != nil && c.exp.dataKnower.KnownData(int64(o.req.Offset), int64(o.req.Length))
}

// readCached reads a small READ's data into a buffer if it is all
// cached; see readCachedInline. tried reports whether it asked the
// backend.
func (c *conn) readCached(ctx context.Context, o *op) (tried, hit bool) {
	cr := c.exp.cachedReader
	if cr == nil || o.req.Length > inlineMax || c.mayBeSparse(o) {
		return false, false
	}
	n := int(o.req.Length)
	buf, err := c.bufs.Get(ctx, n)
	if err != nil {
		return false, false
	}
	if len(buf) < n || !cr.ReadCached(buf[:n], int64(o.req.Offset)) {
		c.bufs.Put(buf)
		return len(buf) >= n, false
	}
	o.buf, o.data, o.path = buf, buf[:n], PathReadBuffered
	return true, true
}

// cacheTries spares the reader its failed attempts when the data is not
// in the page cache (an image larger than memory, read at random): after
// missRun misses in a row it tries one READ in missRun, until one hits.
// A miss costs a system call the READ's own goroutine then repeats.
type cacheTries struct{ misses int }

const missRun = 16

func (t *cacheTries) try() bool {
	if t.misses < missRun {
		return true
	}
	t.misses++
	return t.misses%missRun == 0
}

func (t *cacheTries) record(hit bool) {
	if hit {
		t.misses = 0
	} else if t.misses < missRun {
		t.misses++
	}
}
