package bufstrategy

import "sync"

// stack is a bounded LIFO free list of equal-sized buffers, shared by all
// connections of a Pool or Stream. LIFO hands out the most recently used
// buffer, whose pages are most likely still resident and in cache; it also
// keeps the items ordered by age, oldest at the bottom, which is where the
// reclaimer trims. A mutex-guarded slice rather than a sync.Pool: sync.Pool
// boxes each []byte in an interface (one allocation per Put), empties
// itself at every GC and cannot be trimmed by age or bounded in bytes.
type stack struct {
	mu    sync.Mutex
	items []idleBuf // oldest first; guarded by mu
	max   int       // most items retained
}

// pop takes the most recently returned buffer, or nil.
func (s *stack) pop() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.items)
	if n == 0 {
		return nil
	}
	b := s.items[n-1].b
	s.items[n-1] = idleBuf{} // do not pin the buffer from the spare capacity
	s.items = s.items[:n-1]
	return b
}

// push retains b and reports whether there was room.
func (s *stack) push(b []byte, t int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.items) >= s.max {
		return false
	}
	s.items = append(s.items, idleBuf{b: b, since: t})
	return true
}

// sweep frees buffers idle since cutoff or earlier, oldest first, until
// limit bytes are freed, and returns the bytes freed.
func (s *stack) sweep(cutoff, limit int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var freed int64
	k := 0
	for k < len(s.items) && s.items[k].since <= cutoff && freed < limit {
		freed += int64(cap(s.items[k].b))
		k++
	}
	n := copy(s.items, s.items[k:])
	clear(s.items[n:])
	s.items = s.items[:n]
	return freed
}

// drain frees every retained buffer and returns the bytes freed.
func (s *stack) drain() int64 { return s.sweep(1<<63-1, 1<<63-1) }
