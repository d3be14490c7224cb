package bufstrategy

import "math/bits"

// minShift is log2(MinChunk), the first size class.
const minShift = 12

// Pool is the power-of-two pool policy ("pool"): size classes from 4 KiB
// up to MaxRequest rounded up to a power of two, each a free list SHARED by
// all connections of the factory. Get rounds n up to its class with
// math/bits and hands out b[:n]; Put returns the buffer to its class, or
// drops it if its capacity is not a class (foreign buffers are dropped and
// counted, not a panic). Each class retains at most
// max(1, RetainPerClass/classSize) idle buffers, so idle memory is bounded
// whatever the traffic, and the idle reclaimer trims classes unused for
// IdleAfter.
//
// Trade-off: after warm-up Get/Put allocate nothing (0 allocs/op for any
// mix of sizes, which grow only reaches per connection), and memory is
// shared across connections instead of following each connection's peak.
// The cost is internal fragmentation (up to 2x: a 129 KiB request pins
// 256 KiB, and that is what is charged to the Budget) and a mutex per class
// shared by all connections. The free lists are mutex-guarded stacks of
// []byte rather than sync.Pool, whose interface boxing allocates on every
// Put and which empties at every GC.
//
// Create it with New(NamePool, cfg).
type Pool struct {
	core
	classes []stack // classes[i] holds buffers of MinChunk<<i bytes
}

// newPool builds a Pool whose largest class is MaxRequest rounded up to
// a power of two, or the largest power of two within the budget.
func newPool(s settings, b *Budget) *Pool {
	top := classOf(s.maxRequest)
	limit := MinChunk << top
	if b != nil && b.size < int64(limit) {
		// Largest class that fits the budget: a class is a power of two.
		top = bits.Len64(uint64(b.size)) - 1 - minShift
		limit = MinChunk << top
	}
	p := &Pool{classes: make([]stack, top+1)}
	for i := range p.classes {
		p.classes[i].max = max(1, int(s.retainPerClass>>(minShift+i)))
	}
	p.init(NamePool, s, b, limit)
	p.rec = newReclaimer(&p.core, p.sweep)
	return p
}

// classOf is the index of the smallest class holding n bytes.
func classOf(n int) int {
	if n <= MinChunk {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// NewConn implements Factory.
func (p *Pool) NewConn() Strategy {
	return &sharedConn{acct: acct{f: &p.core}, set: p}
}

// Close stops the idle reclaimer and frees every idle buffer. Buffers
// returned afterwards are dropped. It implements Factory.Close and always
// returns nil.
func (p *Pool) Close() error {
	p.close(func() int64 { return p.sweep(1<<63-1, 1<<63-1) })
	return nil
}

// stackFor implements stackSet: n's power-of-two class.
func (p *Pool) stackFor(n int) (*stack, int) {
	i := classOf(n)
	return &p.classes[i], MinChunk << i
}

// stackOf implements stackSet: only exact powers of two within the
// classes are the pool's.
func (p *Pool) stackOf(capacity int) *stack {
	if capacity < MinChunk || capacity&(capacity-1) != 0 {
		return nil
	}
	i := bits.Len(uint(capacity)) - 1 - minShift
	if i >= len(p.classes) {
		return nil
	}
	return &p.classes[i]
}

// sweep trims classes from the largest down, so a bounded tick frees the
// most memory.
func (p *Pool) sweep(cutoff, limit int64) int64 {
	var freed int64
	for i := len(p.classes) - 1; i >= 0 && freed < limit; i-- {
		freed += p.classes[i].sweep(cutoff, limit-freed)
	}
	return freed
}
