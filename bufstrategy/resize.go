package bufstrategy

import (
	"context"
	"sync"
)

// Resize is the resize-on-mismatch policy ("resize") of go-nbd v0.3.2
// (server/nbd.go l.349-351: if length != len(b) { b = make([]byte, length) }):
// each connection holds buffers of exactly one size, the length of its
// latest request, and replaces them all whenever a request's length
// differs. go-nbd serves one request at a time per connection, so it holds
// one buffer; nbdd runs a connection's requests concurrently, so a
// connection keeps up to Config.GrowMaxIdle idle buffers of the current
// size, one per request that was in flight at once. Without them, every
// request of a steady queue-depth-64 stream found the one buffer taken
// and allocated its own, and nbdcopy read a file export 20% slower than
// go-nbd itself.
//
// Trade-off: simple, and memory per idle connection is a few buffers of
// the last request's size, but it reallocates (and the runtime zeroes) on
// every change of size, so alternating sizes, such as 4 KiB READs between
// 128 KiB WRITEs, allocate on every request. It is kept as the baseline
// the other policies are measured against. It has no idle reclaimer: the
// held buffers live until the connection closes or the size changes.
//
// Create it with New(NameResize, cfg).
type Resize struct {
	core
}

// newResize builds a Resize factory from validated settings.
func newResize(s settings, b *Budget) *Resize {
	r := &Resize{}
	r.init(NameResize, s, b, s.maxRequest)
	return r
}

// NewConn implements Factory.
func (r *Resize) NewConn() Strategy {
	return &resizeConn{acct: acct{f: &r.core}, r: r}
}

// Close marks the factory closed: buffers returned afterwards are dropped.
// Held buffers go when their connection closes. It implements Factory.Close and
// always returns nil.
func (r *Resize) Close() error {
	r.close(func() int64 { return 0 })
	return nil
}

// resizeConn is one connection's Resize strategy.
type resizeConn struct {
	acct
	r    *Resize
	mu   sync.Mutex
	size int      // the current size: the latest request's length; guarded by mu
	free [][]byte // idle buffers of exactly size bytes; guarded by mu
}

// Get implements Strategy.
func (c *resizeConn) Get(ctx context.Context, n int) ([]byte, error) { return c.get(ctx, n, true) }

// TryGet implements Strategy.
func (c *resizeConn) TryGet(n int) ([]byte, error) { return c.get(context.Background(), n, false) }

func (c *resizeConn) get(ctx context.Context, n int, wait bool) ([]byte, error) {
	n, err := c.r.length(n)
	if err != nil {
		return nil, err
	}
	if err := c.charge(ctx, n, wait); err != nil {
		return nil, err
	}
	if b := c.take(n); b != nil {
		c.r.reused(n)
		return c.lend(b, n), nil
	}
	return c.lend(c.r.alloc(n), n), nil
}

// take returns an idle buffer of n bytes, or nil after making n the
// current size and freeing the idle buffers of the old one.
func (c *resizeConn) take(n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n != c.size {
		c.size = n
		c.freeIdle()
		return nil
	}
	last := len(c.free) - 1
	if last < 0 {
		return nil
	}
	b := c.free[last]
	c.free[last] = nil
	c.free = c.free[:last]
	return b
}

// freeIdle lets go of every idle buffer. c.mu must be held.
func (c *resizeConn) freeIdle() {
	for i, b := range c.free {
		c.r.freed(int64(cap(b)), false)
		c.free[i] = nil
	}
	c.free = c.free[:0]
}

// Put implements Strategy: b is kept if it has the current size and
// there is room.
func (c *resizeConn) Put(b []byte) {
	if !c.uncharge(b) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() || c.r.closed.Load() || cap(b) != c.size ||
		len(c.free) >= c.r.set.growMaxIdle || c.r.idleFull(cap(b)) {
		c.r.drop(cap(b))
		return
	}
	c.free = append(c.free, b[:cap(b)])
	c.r.retained(cap(b))
}

// Close implements Strategy: it returns the connection's outstanding
// budget and drops the held buffers.
func (c *resizeConn) Close() {
	if !c.closeAcct() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.freeIdle()
}
