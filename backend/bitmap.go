package backend

import (
	"math/bits"
	"sync/atomic"
)

// bitmap is a fixed-size set of block numbers whose bits may be set and
// cleared concurrently.
type bitmap []atomic.Uint64

// newBitmap returns a bitmap for n blocks.
func newBitmap(n int64) bitmap { return make(bitmap, (n+63)/64) }

// get reports whether block i is set.
func (b bitmap) get(i int64) bool { return b[i/64].Load()&(1<<(i%64)) != 0 }

// set sets blocks [lo, hi). Bits already set are only read, so hot blocks
// do not bounce their cache line between writers.
func (b bitmap) set(lo, hi int64) {
	for i := lo; i < hi; i++ {
		if w, m := &b[i/64], uint64(1)<<(i%64); w.Load()&m == 0 {
			w.Or(m)
		}
	}
}

// unset clears blocks [lo, hi).
func (b bitmap) unset(lo, hi int64) {
	for i := lo; i < hi; i++ {
		if w, m := &b[i/64], uint64(1)<<(i%64); w.Load()&m != 0 {
			w.And(^m)
		}
	}
}

// all reports whether blocks [lo, hi) are all set.
func (b bitmap) all(lo, hi int64) bool {
	for i := lo; i < hi; i++ {
		if !b.get(i) {
			return false
		}
	}
	return true
}

// blockRun is a half-open run of block numbers.
type blockRun struct{ lo, hi int64 }

// drain clears every set bit and calls fn with each run of consecutive
// blocks that were set, split at maxRun blocks. If fn fails, the failed run
// and every block not yet passed to fn are set again, and the error is
// returned.
func (b bitmap) drain(maxRun int64, fn func(blockRun) error) error {
	var run blockRun
	for k := range b {
		w := b[k].Swap(0)
		for w != 0 {
			bit := int64(bits.TrailingZeros64(w))
			w &^= 1 << bit
			i := int64(k)*64 + bit
			if i == run.hi && run.hi-run.lo < maxRun {
				run.hi++
				continue
			}
			if err := b.emit(run, fn); err != nil {
				b[k].Or(w | 1<<bit)
				return err
			}
			run = blockRun{i, i + 1}
		}
	}
	return b.emit(run, fn)
}

// emit passes a non-empty run to fn, setting it again if fn fails.
func (b bitmap) emit(run blockRun, fn func(blockRun) error) error {
	if run.hi == run.lo {
		return nil
	}
	if err := fn(run); err != nil {
		b.set(run.lo, run.hi)
		return err
	}
	return nil
}
