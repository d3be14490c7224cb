package backend

import (
	"math"
	"sync"
	"sync/atomic"
)

// Memory layout. A Memory is a three-level radix tree: a directory of
// midTables, each holding leafTables, each holding chunks. Every level is
// allocated on first write, so an export costs nothing until written; a
// 1 TiB export that has seen one write holds one midTable (32 KiB), one
// leafTable (128 KiB) and one 64 KiB chunk.
const (
	chunkShift = 16 // 64 KiB chunks: the unit of allocation and of TRIM
	chunkSize  = 1 << chunkShift
	tableShift = 12 // 4096 slots per table
	tableSize  = 1 << tableShift
	tableMask  = tableSize - 1
	// midSpanShift is log2 of the bytes one midTable covers (1 TiB).
	midSpanShift = chunkShift + 2*tableShift
)

// chunk is one allocated piece of a Memory: exactly 16 pages, so the Go
// allocator wastes nothing on it and never scans it (it holds no pointers).
type chunk [chunkSize]byte

// leafTable holds 4096 chunks (256 MiB of export), each in a slot with
// its lock.
type leafTable struct {
	slots [tableSize]slot
}

// slot is one chunk of a leafTable and its lock. mu guards the contents
// of the chunk and every change of the pointer, so a write can never land
// in a chunk that a concurrent Trim has just dropped. Requests to
// different chunks never contend. The pointer is atomic so that Extents
// can read it without locking. Lock and pointer share a cache line (a
// slot is 32 bytes, two to a line), so that a random 4 KiB request misses
// the cache once for both.
type slot struct {
	mu    sync.RWMutex
	chunk atomic.Pointer[chunk]
}

// read copies chunk j from offset o into dst, or zeroes if it is absent.
func (l *leafTable) read(j int, dst []byte, o int) {
	l.slots[j].mu.RLock()
	defer l.slots[j].mu.RUnlock()
	if c := l.slots[j].chunk.Load(); c != nil {
		copy(dst, c[o:])
	} else {
		clear(dst)
	}
}

// write copies src into chunk j at offset o, taking the chunk from p
// first if it is absent.
func (l *leafTable) write(j int, src []byte, o int, p *chunkPool) {
	l.slots[j].mu.Lock()
	defer l.slots[j].mu.Unlock()
	copy(l.allocLocked(j, p)[o:], src)
}

// chunkForWrite returns chunk j, taking it from p first if it is absent.
func (l *leafTable) chunkForWrite(j int, p *chunkPool) []byte {
	l.slots[j].mu.Lock()
	defer l.slots[j].mu.Unlock()
	return l.allocLocked(j, p)
}

// allocLocked returns chunk j, taking it from p first if it is absent.
// The caller holds slots[j].mu. It returns a slice made where the pointer
// is known not to be nil, so no nil check reads the chunk's first byte,
// a line and a page that a small write further in does not otherwise
// touch (docs/performance.md, "4 KiB random write at queue depth 32").
func (l *leafTable) allocLocked(j int, p *chunkPool) []byte {
	s := &l.slots[j]
	if c := s.chunk.Load(); c != nil {
		return c[:]
	}
	c := p.get()
	s.chunk.Store(c)
	return c[:]
}

// zero clears n bytes of chunk j from offset o. If drop is set and the
// range is the whole chunk, the chunk goes back to p instead.
func (l *leafTable) zero(j, o, n int, drop bool, p *chunkPool) {
	l.slots[j].mu.Lock()
	defer l.slots[j].mu.Unlock()
	c := l.slots[j].chunk.Load()
	switch {
	case c == nil:
	case drop && n == chunkSize:
		l.slots[j].chunk.Store(nil)
		p.put(c)
	default:
		clear(c[o : o+n])
	}
}

type midTable struct {
	leaves [tableSize]atomic.Pointer[leafTable]
}

type directory struct{ mids []atomic.Pointer[midTable] }

// Memory is a sparse in-memory Backend. Storage is allocated in 64 KiB
// chunks on first write; unwritten and trimmed space reads as zeroes and is
// reported as a hole by Extents. The tree is navigated with atomic loads
// and each chunk has its own lock, so requests to different chunks run in
// parallel without a global lock, and overlapping requests are race-free
// (each chunk piece is copied atomically). Memory implements Trimmer, FastZeroer, Extenter, Cacher and
// MultiConner. The zero value is an empty export of size 0; use NewMemory.
type Memory struct {
	size   int64
	dir    atomic.Pointer[directory] // allocated on first write
	chunks chunkPool
}

// NewMemory returns a sparse memory export of size bytes. It allocates
// nothing beyond the Memory itself until the first write.
func NewMemory(size int64) *Memory {
	return &Memory{size: max(size, 0)}
}

// loadOrNew returns *p, first installing a new zero T if *p is nil. When two
// goroutines race, both get the value that won the compare-and-swap.
// Tables, the only things created this way, are never removed.
func loadOrNew[T any](p *atomic.Pointer[T]) *T {
	if v := p.Load(); v != nil {
		return v
	}
	if v := new(T); p.CompareAndSwap(nil, v) {
		return v
	}
	return p.Load()
}

// directory returns the directory, creating it when create is set.
func (m *Memory) directory(create bool) *directory {
	if d := m.dir.Load(); d != nil || !create {
		return d
	}
	n := int64(0)
	if m.size > 0 {
		n = (m.size-1)>>midSpanShift + 1 // written so that it cannot overflow
	}
	d := &directory{mids: make([]atomic.Pointer[midTable], n)}
	if m.dir.CompareAndSwap(nil, d) {
		return d
	}
	return m.dir.Load()
}

// leaf returns the leafTable holding chunk i, or nil when create is false
// and a table on the way is missing.
func (m *Memory) leaf(i int64, create bool) *leafTable {
	d := m.directory(create)
	if d == nil {
		return nil
	}
	mp := &d.mids[i>>(2*tableShift)]
	mid := mp.Load()
	if mid == nil {
		if !create {
			return nil
		}
		mid = loadOrNew(mp)
	}
	lp := &mid.leaves[(i>>tableShift)&tableMask]
	if create {
		return loadOrNew(lp)
	}
	return lp.Load()
}

// span calls fn for each chunk piece of [off, off+n): the chunk index, the
// offset inside the chunk, and the piece's position [lo, hi) relative to
// off. fn does not escape, so closures passed to span stay on the stack.
func span(off, n int64, fn func(i int64, o, lo, hi int)) {
	for done := int64(0); done < n; {
		pos := off + done
		o := int(pos & (chunkSize - 1))
		step := min(n-done, int64(chunkSize-o))
		fn(pos>>chunkShift, o, int(done), int(done+step))
		done += step
	}
}

// Size returns the export size.
func (m *Memory) Size() (int64, error) { return m.size, nil }

// Sync does nothing: memory has no stabler storage to flush to.
func (m *Memory) Sync() error { return nil }

// ReadAt copies from the export into p. Unwritten space reads as zeroes.
// A read running past the end is cut short with an error that matches both
// ErrOutOfRange and io.EOF.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	n, err := readLimit(len(p), off, m.size)
	span(off, int64(n), func(i int64, o, lo, hi int) {
		if l := m.leaf(i, false); l != nil {
			l.read(int(i&tableMask), p[lo:hi], o)
		} else {
			clear(p[lo:hi])
		}
	})
	return n, err
}

// WriteAt copies p into the export, allocating chunks on first write. A
// write running past the end writes nothing and returns ErrOutOfRange.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("write", off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	span(off, int64(len(p)), func(i int64, o, lo, hi int) {
		m.leaf(i, true).write(int(i&tableMask), p[lo:hi], o, &m.chunks)
	})
	return len(p), nil
}

// Trim frees the chunks that [off, off+length) covers entirely and zeroes
// the partial chunks at its edges, so the whole range reads as zeroes.
func (m *Memory) Trim(off, length int64) error {
	if err := checkRange("trim", off, length, m.size); err != nil {
		return err
	}
	m.zeroRange(off, length, true)
	return nil
}

// WriteZeroes zeroes [off, off+length). With noHole false it behaves like
// Trim. With noHole true the chunks already allocated stay allocated and are
// cleared in place; chunks never written stay unallocated, since allocating
// zeroed memory for them would change nothing a client can observe. It is
// always fast, so the fast flag is ignored.
func (m *Memory) WriteZeroes(off, length int64, noHole, fast bool) error {
	if err := checkRange("write zeroes", off, length, m.size); err != nil {
		return err
	}
	m.zeroRange(off, length, !noHole)
	return nil
}

// zeroRange zeroes [off, off+length), dropping whole chunks if drop is set.
// Tables never written are skipped whole, as Extents skips them, so that
// zeroing or trimming a large range costs what was written in it: with
// 64-bit lengths (extended headers) one request may cover a whole export.
func (m *Memory) zeroRange(off, length int64, drop bool) {
	end := off + length
	for pos := off; pos < end; {
		i := pos >> chunkShift
		l := m.leaf(i, false)
		if l == nil {
			_, next := m.runAt(i) // the end of the missing table's span
			if next > (end-1)>>chunkShift {
				return
			}
			pos = next << chunkShift
			continue
		}
		stop := min(end, ((i|tableMask)+1)<<chunkShift) // the end of l's span
		span(pos, stop-pos, func(i int64, o, lo, hi int) {
			l.zero(int(i&tableMask), o, hi-lo, drop, &m.chunks)
		})
		pos = stop
	}
}

// CanFastZero reports true: zeroing memory is never slower than writing.
func (m *Memory) CanFastZero() bool { return true }

// Cache does nothing: the data is already in memory.
func (m *Memory) Cache(off, length int64) error {
	return checkRange("cache", off, length, m.size)
}

// CanMultiConn reports true: every connection sees the same memory.
func (m *Memory) CanMultiConn() bool { return true }

// Extents reports chunks never written or dropped by Trim as
// ExtentHole|ExtentZero and allocated chunks as data (flags 0), merging
// neighbours. Missing tables are skipped whole, so asking about a large
// unwritten export is cheap.
func (m *Memory) Extents(off, length int64, fn func(Extent) bool) error {
	if err := checkRange("extents", off, length, m.size); err != nil {
		return err
	}
	return blockExtents(off, length, chunkShift, m.runAt, fn)
}

// runAt reports whether chunk i is allocated and the index of the first
// chunk after it whose state may differ: for a missing table that is the end
// of the table's span.
func (m *Memory) runAt(i int64) (allocated bool, next int64) {
	d := m.dir.Load()
	if d == nil {
		return false, math.MaxInt64
	}
	mid := d.mids[i>>(2*tableShift)].Load()
	if mid == nil {
		return false, (i | (tableSize*tableSize - 1)) + 1
	}
	leaf := mid.leaves[(i>>tableShift)&tableMask].Load()
	if leaf == nil {
		return false, (i | tableMask) + 1
	}
	return leaf.slots[i&tableMask].chunk.Load() != nil, i + 1
}
