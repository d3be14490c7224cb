package bufstrategy

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// counters are a factory's statistics, updated lock-free on every Get and
// Put.
type counters struct {
	held, inUse, idle, allocs, waits, hits, reclaimed, dropped atomic.Int64
}

// core is what the four factory types share: settings, budget, counters
// and the idle reclaimer.
type core struct {
	name   string
	set    settings
	budget *Budget
	limit  int // longest buffer Get hands out: MaxRequest capped by policy and budget
	cnt    counters
	closed atomic.Bool // set by the factory's Close; retained buffers are then dropped
	rec    *reclaimer  // nil when the policy has nothing to reclaim
}

// init fills c for a policy whose buffers are at most limit bytes.
func (c *core) init(name string, s settings, b *Budget, limit int) {
	if b != nil {
		limit = min(limit, int(b.size))
	}
	c.name, c.set, c.budget, c.limit = name, s, b, min(limit, s.maxRequest)
}

// Name implements Factory.
func (c *core) Name() string { return c.name }

// ChunkLimit implements Factory: 0 unless the budget (or the stream chunk)
// forces requests to be moved in pieces.
func (c *core) ChunkLimit() int {
	if c.limit < c.set.maxRequest {
		return c.limit
	}
	return 0
}

// Stats implements Factory.
func (c *core) Stats() Stats {
	return Stats{
		Strategy:    c.name,
		BytesHeld:   c.cnt.held.Load(),
		BytesInUse:  c.cnt.inUse.Load(),
		Allocs:      c.cnt.allocs.Load(),
		BudgetWaits: c.cnt.waits.Load(),
		BytesIdle:   c.cnt.idle.Load(),
		Hits:        c.cnt.hits.Load(),
		Reclaimed:   c.cnt.reclaimed.Load(),
		Dropped:     c.cnt.dropped.Load(),
	}
}

// length validates a request length and returns the buffer length Get
// hands out for it.
func (c *core) length(n int) (int, error) {
	if n <= 0 || n > c.set.maxRequest {
		return 0, fmt.Errorf("%w: %d bytes (max %d)", ErrRequestSize, n, c.set.maxRequest)
	}
	return min(n, c.limit), nil
}

// alloc makes a new buffer of size bytes and counts it.
func (c *core) alloc(size int) []byte {
	c.cnt.allocs.Add(1)
	c.cnt.held.Add(int64(size))
	return make([]byte, size)
}

// drop forgets a held buffer of size bytes; the GC frees it.
func (c *core) drop(size int) { c.cnt.held.Add(-int64(size)) }

// idleFull reports whether keeping size more bytes idle would hold more
// idle memory than the budget allows in use. The budget charges buffers in
// use; this bounds the idle ones by the same figure, so that what a policy
// holds in all never exceeds twice the budget, whatever the number of
// connections (go-nbd issue 6: 384 connections each holding 32 MiB).
func (c *core) idleFull(size int) bool {
	return c.budget != nil && c.cnt.idle.Load()+int64(size) > c.budget.Size()
}

// retained counts size bytes moving from in use to idle and makes sure
// the reclaimer runs.
func (c *core) retained(size int) {
	c.cnt.idle.Add(int64(size))
	c.kickReclaimer()
}

// reserveIdle counts size bytes as idle unless that would hold more idle
// memory than the budget (the bound idleFull checks, here taken
// atomically, so that concurrent Puts to the shared free lists cannot
// overshoot it together).
func (c *core) reserveIdle(size int64) bool {
	n := c.cnt.idle.Add(size)
	if c.budget != nil && n > c.budget.Size() {
		c.cnt.idle.Add(-size)
		return false
	}
	return true
}

// kickReclaimer makes sure the reclaimer runs.
func (c *core) kickReclaimer() {
	if c.rec != nil {
		c.rec.kick()
	}
}

// reused counts an idle buffer of size bytes taken by Get.
func (c *core) reused(size int) {
	c.cnt.idle.Add(-int64(size))
	c.cnt.hits.Add(1)
}

// freed counts idle bytes let go by the reclaimer or by Close.
func (c *core) freed(n int64, reclaimed bool) {
	c.cnt.idle.Add(-n)
	c.cnt.held.Add(-n)
	if reclaimed {
		c.cnt.reclaimed.Add(n)
	}
}

// close stops the reclaimer and frees idle memory with free.
func (c *core) close(free func() int64) {
	if c.closed.Swap(true) {
		return
	}
	if c.rec != nil {
		c.rec.close()
	}
	c.freed(free(), false)
}

// acct is one connection's share of the budget: the buffers its Gets
// handed out and its Puts have not yet returned. Tracking them per
// connection lets Close give back what a dying connection never returned,
// and lets Put recognise a buffer it did not hand out (grow and resize
// cannot tell one by its size), so a stray Put can neither corrupt the
// server-wide Budget nor put a foreign buffer into circulation.
type acct struct {
	f      *core
	closed atomic.Bool // set under mu, read without it on the fast path
	mu     sync.Mutex
	inUse  int64              // bytes charged and not yet returned; guarded by mu
	out    map[*byte]struct{} // first bytes of the buffers handed out; guarded by mu
}

// charge takes size bytes from the budget for one Get, or for one TryGet
// (wait false), which fails with ErrBudgetExhausted rather than queue.
func (a *acct) charge(ctx context.Context, size int, wait bool) error {
	if a.closed.Load() {
		return ErrClosed
	}
	if !wait {
		if !a.f.budget.TryAcquire(int64(size)) {
			return ErrBudgetExhausted
		}
	} else {
		waited, err := a.f.budget.acquire(ctx, int64(size))
		if waited {
			a.f.cnt.waits.Add(1)
		}
		if err != nil {
			return err
		}
	}
	a.mu.Lock()
	if a.closed.Load() {
		a.mu.Unlock()
		a.f.budget.Release(int64(size))
		return ErrClosed
	}
	a.inUse += int64(size)
	a.mu.Unlock()
	a.f.cnt.inUse.Add(int64(size))
	return nil
}

// lend records b, whose capacity was charged, as handed out and returns
// b[:n].
func (a *acct) lend(b []byte, n int) []byte {
	a.mu.Lock()
	// Recorded even after a racing Close, whose Put must then find it.
	if a.out == nil {
		a.out = make(map[*byte]struct{})
	}
	a.out[&b[:1][0]] = struct{}{}
	a.mu.Unlock()
	return b[:n]
}

// uncharge returns the bytes of b for one Put and reports whether b may
// be recycled. It refuses (and the caller drops b) after Close, which
// already returned the bytes, and for a buffer this connection did not
// hand out, which is counted in Stats.Dropped.
func (a *acct) uncharge(b []byte) bool {
	size := cap(b)
	if size == 0 {
		a.reject()
		return false
	}
	key := &b[:1][0]
	a.mu.Lock()
	if _, ok := a.out[key]; !ok {
		a.mu.Unlock()
		a.reject()
		return false
	}
	delete(a.out, key)
	if a.closed.Load() {
		a.mu.Unlock()
		a.f.drop(size) // handed out before Close, still counted as held
		return false
	}
	a.inUse -= int64(size)
	a.mu.Unlock()
	a.f.budget.Release(int64(size))
	a.f.cnt.inUse.Add(-int64(size))
	return true
}

// reject counts a Put of a buffer the connection did not hand out.
func (a *acct) reject() { a.f.cnt.dropped.Add(1) }

// closeAcct marks the connection closed and returns its outstanding bytes
// to the budget. Buffers still out are counted as held until their Put.
// It reports false if the connection was already closed.
func (a *acct) closeAcct() bool {
	a.mu.Lock()
	if a.closed.Swap(true) {
		a.mu.Unlock()
		return false
	}
	n := a.inUse
	a.inUse = 0 // a.out stays: a Put after Close must still be one of ours
	a.mu.Unlock()
	a.f.budget.Release(n)
	a.f.cnt.inUse.Add(-n)
	return true
}

// String formats s on one line for debug logs.
func (s Stats) String() string {
	return fmt.Sprintf("%s: held=%d in-use=%d idle=%d allocs=%d hits=%d budget-waits=%d reclaimed=%d dropped=%d",
		s.Strategy, s.BytesHeld, s.BytesInUse, s.BytesIdle, s.Allocs, s.Hits, s.BudgetWaits, s.Reclaimed, s.Dropped)
}

// LogValue implements slog.LogValuer, so slog.Any("buffers", f.Stats())
// logs the counters as a group of structured fields.
func (s Stats) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("strategy", s.Strategy),
		slog.Int64("held", s.BytesHeld),
		slog.Int64("in_use", s.BytesInUse),
		slog.Int64("idle", s.BytesIdle),
		slog.Int64("allocs", s.Allocs),
		slog.Int64("hits", s.Hits),
		slog.Int64("budget_waits", s.BudgetWaits),
		slog.Int64("reclaimed", s.Reclaimed),
		slog.Int64("dropped", s.Dropped),
	)
}

// epoch anchors monotonic timestamps for idle buffers.
var epoch = time.Now()

// now is a monotonic clock in nanoseconds, immune to wall-clock jumps.
func now() int64 { return int64(time.Since(epoch)) }

// idleBuf is a retained buffer and when it became idle.
type idleBuf struct {
	b     []byte // full capacity
	since int64  // now() at Put
}
