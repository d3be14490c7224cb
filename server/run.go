package server

import (
	"context"
	"fmt"

	"github.com/nbdd/nbdd/protocol"
)

// start runs o as its plan says (plan.go). A WRITE's payload is taken
// from the socket first, on the reader, whatever the plan. Only socket
// errors are returned; o was then not handed on.
func (c *conn) start(ctx context.Context, o *op) error {
	if o.req.Type == protocol.CmdWrite {
		if o.plan.data != PathWriteBuffered {
			return c.writeOnReader(ctx, o) // payload.go
		}
		if err := c.readPayload(o.buf); err != nil {
			return fmt.Errorf("read write payload: %w", err)
		}
	}
	switch o.plan.run {
	case onReader:
		c.exec(ctx, o)
		c.hold(o)
	case tryOnReader:
		if c.readCached(o) {
			c.hold(o)
			return nil
		}
		c.replan(o, o.plan.afterMiss())
		c.runOwn(ctx, o)
	default:
		c.runOwn(ctx, o)
	}
	return nil
}

// runOwn runs o on a goroutine of its own, within Server.MaxBackendCalls,
// which then sends the reply (reply.go: sendOwn). Under syncOnGoroutine
// the reader has written o's data already and only its FUA sync is left.
func (c *conn) runOwn(ctx context.Context, o *op) {
	go func() {
		c.srv.beginCall()
		if o.plan.run == syncOnGoroutine {
			o.fail(c.exp.Backend.Sync())
			o.encode(c.format)
		} else {
			c.exec(ctx, o)
		}
		c.srv.endCall()
		c.w.sendOwn(o)
	}()
}

// replan moves o to plan p, one of the edges of plan.go, and its count
// with it.
func (c *conn) replan(o *op, p plan) {
	c.counts.moved(o.req, o.plan.data, p.data, o.plan.byReader(), p.byReader())
	o.plan = p
}

// readCached tries a READ planned tryOnReader: it reads the data if the
// page cache holds all of it (backend.CachedReader), and reports whether
// it did; a miss left nothing to undo.
func (c *conn) readCached(o *op) bool {
	n := int(o.req.Length)
	hit := c.exp.cachedReader.ReadCached(o.buf[:n], int64(o.req.Offset))
	c.cacheTries.record(hit)
	if hit {
		o.data = o.buf[:n]
		o.encode(c.format)
	}
	return hit
}

// The reader's answers to the planner's questions (planFacts).

func (c *conn) mayTryCache() bool        { return c.cacheTries.try() }
func (c *conn) triedCache(hit bool)      { c.cacheTries.record(hit) }
func (c *conn) cached(off, n int64) bool { return c.exp.file.Cached(off, n) }

func (c *conn) knownData(off, n int64) bool {
	return c.exp.dataKnower != nil && c.exp.dataKnower.KnownData(off, n)
}

func (c *conn) allData(off, n int64) bool {
	segs, err := c.segments(off, n)
	return err == nil && len(segs) == 1 && !segs[0].hole
}
