package backend

import (
	"math/bits"
	"sync/atomic"
)

// stateMap holds the state of every block of a clone, 2 bits each, 32 to
// a word, in the layout of the overlay's map slots (block k of a word in
// bits 2k and 2k+1). Words are read and changed atomically, so requests
// look states up without a lock; a change is a compare-and-swap, so
// requests to different blocks of one word never lose each other's.
type stateMap []atomic.Uint64

// newStateMap returns a map of whole pages covering n blocks, every block
// in stateBase.
func newStateMap(n int64) stateMap { return make(stateMap, mapPages(n)*pageWords) }

// repeated is a word whose 32 blocks are all in state s.
func repeated(s blockState) uint64 { return uint64(s) * 0x5555555555555555 }

// get returns the state of block i.
func (m stateMap) get(i int64) blockState {
	return blockState(m[i/32].Load() >> (2 * (i % 32)) & 3)
}

// set puts blocks [lo, hi) in state s.
func (m stateMap) set(lo, hi int64, s blockState) {
	for i := lo; i < hi; {
		w := &m[i/32]
		first := i % 32
		n := min(hi-i, 32-first)
		mask := (uint64(1)<<(2*n) - 1) << (2 * first) // n = 32: 1<<64 is 0 in Go, so all ones
		want := repeated(s) & mask
		for {
			old := w.Load()
			if old&mask == want || w.CompareAndSwap(old, old&^mask|want) {
				break
			}
		}
		i += n
	}
}

// all reports whether every block of [lo, hi) is in state s.
func (m stateMap) all(lo, hi int64, s blockState) bool {
	return m.get(lo) == s && m.runEnd(lo, hi, s) == hi
}

// runEnd returns the end of the run of blocks in state s that starts at
// block lo, at most hi. Block lo counts as in s, whatever it holds now:
// the caller read its state, which a concurrent write may have changed
// since, and the run must not take in the blocks of another state after
// it. Words whose remaining blocks all match are passed over at once.
func (m stateMap) runEnd(lo, hi int64, s blockState) int64 {
	rep := repeated(s)
	for i := lo + 1; i < hi; {
		k := i % 32
		diff := (m[i/32].Load() ^ rep) >> (2 * k)
		if diff != 0 {
			return min(i+int64(bits.TrailingZeros64(diff)/2), hi)
		}
		i += 32 - k
	}
	return max(hi, lo+1)
}

// count returns how many blocks of [0, n) are in state s.
func (m stateMap) count(n int64, s blockState) int64 {
	var c int64
	for lo := int64(0); lo < n; {
		st := m.get(lo)
		hi := m.runEnd(lo, n, st)
		if st == s {
			c += hi - lo
		}
		lo = hi
	}
	return c
}

// page copies the words of map page p into dst (pageWords).
func (m stateMap) page(p int64, dst []uint64) {
	for i := range dst {
		dst[i] = m[p*pageWords+int64(i)].Load()
	}
}

// loadPage sets the words of map page p from src, when the map is
// opened.
func (m stateMap) loadPage(p int64, src []uint64) {
	for i, w := range src {
		m[p*pageWords+int64(i)].Store(w)
	}
}
