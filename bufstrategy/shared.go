package bufstrategy

import "context"

// stackSet is what Pool and Stream provide to sharedConn: the free list a
// request uses and the one a returned buffer belongs to.
type stackSet interface {
	// stackFor returns the free list and buffer size for a buffer of n
	// bytes (n already capped by core.length).
	stackFor(n int) (*stack, int)
	// stackOf returns the free list for a returned buffer's capacity, or
	// nil if the policy cannot have made such a buffer.
	stackOf(capacity int) *stack
}

// sharedConn is one connection's strategy for the policies whose free
// lists are shared by all connections (Pool, Stream). The connection only
// does the budget accounting.
type sharedConn struct {
	acct
	set stackSet
}

// Get implements Strategy.
func (c *sharedConn) Get(ctx context.Context, n int) ([]byte, error) { return c.get(ctx, n, true) }

// TryGet implements Strategy.
func (c *sharedConn) TryGet(n int) ([]byte, error) { return c.get(context.Background(), n, false) }

func (c *sharedConn) get(ctx context.Context, n int, wait bool) ([]byte, error) {
	n, err := c.f.length(n)
	if err != nil {
		return nil, err
	}
	st, size := c.set.stackFor(n)
	if err := c.charge(ctx, size, wait); err != nil {
		return nil, err
	}
	b := st.pop()
	if b != nil {
		c.f.reused(size)
	} else {
		b = c.f.alloc(size)
	}
	return c.lend(b, n), nil
}

// Put implements Strategy. A buffer whose capacity is not one the policy
// makes is dropped and counted, never a panic (x/net's putDataBufferChunk
// panics): a server must survive a bug in a caller.
func (c *sharedConn) Put(b []byte) {
	st := c.set.stackOf(cap(b))
	if st == nil {
		c.reject()
		return
	}
	if c.uncharge(b) {
		c.f.recycle(st, b[:cap(b)])
	}
}

// Close implements Strategy. The connection holds no buffers of its own;
// it returns the budget of the buffers still out.
func (c *sharedConn) Close() { c.closeAcct() }

// recycle retains b on st if there is room, in its class and within the
// budget (see idleFull), or drops it.
func (c *core) recycle(st *stack, b []byte) {
	size := int64(cap(b))
	// Counted idle before it is on the list: a Get may pop it the moment
	// it is, and must not take the count below zero.
	if c.closed.Load() || !c.reserveIdle(size) {
		c.drop(cap(b))
		return
	}
	if !st.push(b, now()) {
		c.cnt.idle.Add(-size)
		c.drop(cap(b))
		return
	}
	c.kickReclaimer()
	if c.closed.Load() {
		// The factory closed between the check and the push: drain
		// again so nothing stays retained without a reclaimer.
		c.freed(st.drain(), false)
	}
}
