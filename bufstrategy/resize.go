package bufstrategy

import (
	"context"
	"sync"
)

// Resize is the resize-on-mismatch policy ("resize") of go-nbd v0.3.2
// (server/nbd.go l.349-351: if length != len(b) { b = make([]byte, length) }):
// each connection holds one buffer and replaces it whenever a request's
// length differs from the held buffer's. Concurrent requests on the
// connection find the slot empty and allocate their own; Put keeps the most
// recently returned buffer.
//
// Trade-off: simple, and memory per idle connection is one buffer of the
// last request's size, but it reallocates (and the runtime zeroes) on every
// change of size, so alternating sizes, such as 4 KiB READs between 128 KiB
// WRITEs, allocate on every request. It is kept as the baseline the other
// policies are measured against. It has no idle reclaimer: the held buffer
// lives until the connection closes.
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
// Held buffers go when their connection closes. It implements io.Closer and
// always returns nil.
func (r *Resize) Close() error {
	r.close(func() int64 { return 0 })
	return nil
}

// resizeConn is one connection's Resize strategy.
type resizeConn struct {
	acct
	r   *Resize
	mu  sync.Mutex
	cur []byte // the held buffer, full capacity, or nil; guarded by mu
}

// Get implements Strategy.
func (c *resizeConn) Get(ctx context.Context, n int) ([]byte, error) {
	n, err := c.r.length(n)
	if err != nil {
		return nil, err
	}
	if err := c.charge(ctx, n); err != nil {
		return nil, err
	}
	b := c.take()
	if cap(b) == n {
		c.r.reused(n)
		return c.lend(b, n), nil
	}
	if b != nil {
		c.r.freed(int64(cap(b)), false)
	}
	return c.lend(c.r.alloc(n), n), nil
}

// take empties the slot.
func (c *resizeConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.cur
	c.cur = nil
	return b
}

// Put implements Strategy.
func (c *resizeConn) Put(b []byte) {
	if !c.uncharge(b) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() || c.r.closed.Load() || c.r.idleFull(cap(b)-cap(c.cur)) {
		c.r.drop(cap(b))
		return
	}
	if c.cur != nil {
		c.r.freed(int64(cap(c.cur)), false)
	}
	c.cur = b[:cap(b)]
	c.r.retained(cap(b))
}

// Close implements Strategy: it returns the connection's outstanding
// budget and drops the held buffer.
func (c *resizeConn) Close() {
	if !c.closeAcct() {
		return
	}
	if b := c.take(); b != nil {
		c.r.freed(int64(cap(b)), false)
	}
}
