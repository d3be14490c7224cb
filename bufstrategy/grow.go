package bufstrategy

import (
	"context"
	"sync"
)

// Grow is the grow-and-hold policy ("grow"), the one x/net's
// Framer.getReadBuf and nbdkit's threadlocal_buffer use: each connection
// keeps its buffers, grown to the largest request seen and never shrunk,
// so a steady workload allocates nothing after warm-up. Requests on one
// connection run concurrently, so a connection keeps a small free list
// (one buffer per concurrently active request, like nbdkit's buffer per
// worker thread), at most Config.GrowMaxIdle of them (by default as many as
// a connection may have requests in flight). Get takes the
// smallest idle buffer that fits; if none does, the largest idle one is
// too small and is dropped, and a buffer of exactly n bytes is made in its
// place.
//
// Trade-off: the fewest allocations and no locking between connections,
// but memory follows the peak, per connection: a single 32 MiB WRITE
// leaves 32 MiB held by that connection until the idle reclaimer frees it
// (after Config.IdleAfter) or the connection closes. A small request
// served from a large held buffer charges the buffer's whole capacity to
// the Budget, because that is the memory it pins.
//
// Get always returns b[:n], never the held capacity: go-nbd v0.3.0 read
// WRITE payloads into its whole held buffer and so swallowed the next
// request's header.
//
// Create it with New(NameGrow, cfg).
type Grow struct {
	core
	mu    sync.Mutex
	conns map[*growConn]struct{} // live connections, for the reclaimer; guarded by mu
}

// newGrow builds a Grow factory from validated settings.
func newGrow(s settings, b *Budget) *Grow {
	g := &Grow{conns: make(map[*growConn]struct{})}
	g.init(NameGrow, s, b, s.maxRequest)
	g.rec = newReclaimer(&g.core, g.sweep)
	return g
}

// NewConn implements Factory.
func (g *Grow) NewConn() Strategy {
	c := &growConn{acct: acct{f: &g.core}, g: g}
	g.mu.Lock()
	g.conns[c] = struct{}{}
	g.mu.Unlock()
	return c
}

// Close stops the idle reclaimer and frees the idle buffers of every
// connection. Buffers returned afterwards are dropped, not retained. It
// implements Factory.Close and always returns nil.
func (g *Grow) Close() error {
	g.close(func() int64 { return g.sweep(1<<63-1, 1<<63-1) })
	return nil
}

// sweep frees buffers idle since cutoff, up to limit bytes, across all
// connections.
func (g *Grow) sweep(cutoff, limit int64) int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	var freed int64
	for c := range g.conns {
		if freed >= limit {
			break
		}
		freed += c.sweep(cutoff, limit-freed)
	}
	return freed
}

// growConn is one connection's Grow strategy.
type growConn struct {
	acct
	g    *Grow
	mu   sync.Mutex
	free []idleBuf // idle buffers, at most GrowMaxIdle; guarded by mu
}

// Get implements Strategy.
func (c *growConn) Get(ctx context.Context, n int) ([]byte, error) { return c.get(ctx, n, true) }

// TryGet implements Strategy.
func (c *growConn) TryGet(n int) ([]byte, error) { return c.get(context.Background(), n, false) }

func (c *growConn) get(ctx context.Context, n int, wait bool) ([]byte, error) {
	n, err := c.g.length(n)
	if err != nil {
		return nil, err
	}
	b := c.take(n)
	size := max(n, cap(b))
	if err := c.charge(ctx, size, wait); err != nil {
		if b != nil {
			c.give(b)
		}
		return nil, err
	}
	if b == nil {
		b = c.g.alloc(n)
	}
	return c.lend(b, n), nil
}

// take removes the smallest idle buffer of at least n bytes. If none is
// large enough it drops the largest idle buffer (the one a per-worker
// buffer would have grown from) and returns nil.
func (c *growConn) take(n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	fit, big := -1, -1
	for i, e := range c.free {
		size := cap(e.b)
		if size >= n && (fit < 0 || size < cap(c.free[fit].b)) {
			fit = i
		}
		if big < 0 || size > cap(c.free[big].b) {
			big = i
		}
	}
	if fit >= 0 {
		b := c.remove(fit)
		c.g.reused(cap(b))
		return b
	}
	if big >= 0 {
		c.g.freed(int64(cap(c.remove(big))), false)
	}
	return nil
}

// remove deletes free[i] and returns its buffer. c.mu must be held.
func (c *growConn) remove(i int) []byte {
	b := c.free[i].b
	last := len(c.free) - 1
	c.free[i] = c.free[last]
	c.free[last] = idleBuf{}
	c.free = c.free[:last]
	return b
}

// Put implements Strategy.
func (c *growConn) Put(b []byte) {
	if c.uncharge(b) {
		c.give(b[:cap(b)])
	}
}

// give retains b if there is room, or in place of a smaller idle buffer;
// otherwise it drops b.
func (c *growConn) give(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() || c.g.closed.Load() || c.g.idleFull(cap(b)) {
		c.g.drop(cap(b))
		return
	}
	if len(c.free) < c.g.set.growMaxIdle {
		c.free = append(c.free, idleBuf{b: b, since: now()})
		c.g.retained(cap(b))
		return
	}
	small := -1
	for i, e := range c.free {
		if cap(e.b) < cap(b) && (small < 0 || cap(e.b) < cap(c.free[small].b)) {
			small = i
		}
	}
	if small < 0 {
		c.g.drop(cap(b))
		return
	}
	c.g.freed(int64(cap(c.free[small].b)), false)
	c.free[small] = idleBuf{b: b, since: now()}
	c.g.retained(cap(b))
}

// sweep frees this connection's buffers idle since cutoff, up to limit
// bytes.
func (c *growConn) sweep(cutoff, limit int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var freed int64
	for i := 0; i < len(c.free) && freed < limit; {
		if c.free[i].since > cutoff {
			i++
			continue
		}
		freed += int64(cap(c.remove(i)))
	}
	return freed
}

// Close implements Strategy: it returns the connection's outstanding
// budget, frees its idle buffers and unregisters it from the reclaimer.
func (c *growConn) Close() {
	if !c.closeAcct() {
		return
	}
	c.g.freed(c.sweep(1<<63-1, 1<<63-1), false)
	c.g.mu.Lock()
	delete(c.g.conns, c)
	c.g.mu.Unlock()
}
