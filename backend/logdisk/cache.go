package logdisk

import (
	"container/list"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// cacheBlock is the unit of the read cache: 16 KiB of one object, aligned.
// Small enough that a 4 KiB random READ keeps little it did not ask for
// (the neighbours its fetch unit brings are evicted first), large enough
// that the cache's bookkeeping is about 1 % of it.
const cacheBlock = 16 << 10

// maxRun bounds the blocks one GET fetches, and so the memory a GET in
// flight holds (Config.Reads of them at most).
const maxRun = 256

type blockKey struct {
	seq uint64
	idx int64 // object offset / cacheBlock
}

// blockIndex finds the blocks of the cache by key, a map entry for each
// run of maxRun blocks (what one GET takes): a sequential reader's
// lookups then mostly land in the entry of the one before, and the map
// stays small and barely churns. With an entry per block, the lookups
// took 5–9 % of nbdd's CPU in a cold sequential read, in a table that
// gains and loses 65,536 entries per GiB read.
type blockIndex map[blockKey]*blockRun

// blockRun is the blocks of one run, blockKey{seq, idx/maxRun} in the
// index.
type blockRun struct {
	blocks [maxRun]*block
	n      int
}

func runKey(k blockKey) blockKey { return blockKey{k.seq, k.idx / maxRun} }

func (x blockIndex) get(k blockKey) *block {
	if r := x[runKey(k)]; r != nil {
		return r.blocks[k.idx%maxRun]
	}
	return nil
}

func (x blockIndex) put(b *block) {
	rk := runKey(b.key)
	r := x[rk]
	if r == nil {
		r = new(blockRun)
		x[rk] = r
	}
	r.blocks[b.key.idx%maxRun] = b
	r.n++
}

func (x blockIndex) remove(k blockKey) {
	rk := runKey(k)
	r := x[rk]
	if r == nil || r.blocks[k.idx%maxRun] == nil {
		return
	}
	r.blocks[k.idx%maxRun] = nil
	if r.n--; r.n == 0 {
		delete(x, rk)
	}
}

// anyIn reports whether a block of object seq from first to last-1 is
// indexed.
func (x blockIndex) anyIn(seq uint64, first, last int64) bool {
	for ri := first / maxRun; ri*maxRun < last; ri++ {
		r := x[blockKey{seq, ri}]
		if r == nil {
			continue
		}
		for i := max(first-ri*maxRun, 0); i < min(last-ri*maxRun, maxRun); i++ {
			if r.blocks[i] != nil {
				return true
			}
		}
	}
	return false
}

// len is the number of blocks indexed.
func (x blockIndex) len() int {
	n := 0
	for _, r := range x {
		n += r.n
	}
	return n
}

// block is one cached block, or one being fetched (ready not yet closed).
// Readers pin it while they copy from it, so an eviction never recycles
// a buffer in use.
type block struct {
	key     blockKey
	data    []byte
	err     error
	ready   chan struct{}
	elem    *list.Element // in cache.lru or cache.spec, once ready and kept
	spec    bool          // elem is in cache.spec
	pins    int
	evicted bool
	slot    int32 // 1 + the arena block data is in; 0: from the heap
}

// cache holds recently read blocks of segment objects within limit bytes.
// Blocks of immutable objects never go stale. It keeps two lists: the
// blocks READs asked for, least recently used first out, and the blocks a
// fetch brought on speculation (the neighbours of a READ's miss), oldest
// first out. Speculative blocks go first, while they hold more than
// minSpec of the cache; a READ that finds one moves it to the first list.
// The buffers come from one anonymous mapping of limit bytes, outside the
// Go heap: the garbage collector neither scans them nor
// counts them when it sizes the heap, so the process holds the cache plus
// a heap sized by what the rest of nbdd keeps, not twice the cache.
type cache struct {
	mu     sync.Mutex
	limit  int64
	bytes  int64
	blocks blockIndex
	lru    list.List // of *block asked for, most recent at the front
	spec   list.List // of *block fetched on speculation, newest at the front
	free   []int32   // arena blocks given back
	arena  []byte
	fresh  int32 // arena blocks handed out so far; those after were never used
	// loans is how many loans (lend.go) pin blocks; closed holds the
	// arena close left mapped for them, until the last is released, since
	// a reply may still be sending from it.
	loans  int
	closed []byte
}

func newCache(limit int64) *cache {
	c := &cache{limit: max(limit, 0), blocks: blockIndex{}}
	n := c.limit / cacheBlock
	if n == 0 {
		return c
	}
	arena, err := unix.Mmap(-1, 0, int(n*cacheBlock), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return c // buffers then come from the heap
	}
	c.arena = arena // handed out in order by allocLocked: nothing to set up per block
	return c
}

// slots is how many blocks the arena holds.
func (c *cache) slots() int32 { return int32(len(c.arena) / cacheBlock) }

// slotBuf is arena block i.
func (c *cache) slotBuf(i int32) []byte {
	lo := int(i) * cacheBlock
	return c.arena[lo : lo+cacheBlock : lo+cacheBlock]
}

// close releases the arena, once no loan pins any of it. No block may be
// used afterwards but those loans hold.
func (c *cache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arena != nil {
		c.closed = c.arena
		c.arena, c.free, c.fresh = nil, nil, 0
		c.blocks = blockIndex{}
		c.lru.Init()
		c.spec.Init()
		c.bytes = 0
	}
	c.unmapLocked()
}

func (c *cache) unmapLocked() {
	if c.closed != nil && c.loans == 0 {
		unix.Munmap(c.closed)
		c.closed = nil
	}
}

// beginLoan and endLoan count the loans of blocks (lend.go).
func (c *cache) beginLoan() {
	c.mu.Lock()
	c.loans++
	c.mu.Unlock()
}

func (c *cache) endLoan() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loans--
	c.unmapLocked()
}

// lookup returns the block for key, pinned, and true if the caller must
// fetch it (it was absent and is now registered as being fetched).
func (c *cache) lookup(key blockKey) (*block, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.blocks.get(key); b != nil {
		c.touchLocked(b)
		b.pins++
		return b, false
	}
	b := &block{key: key, ready: make(chan struct{}), pins: 1}
	c.blocks.put(b)
	return b, true
}

// touchLocked marks a kept block as used: the front of the blocks asked
// for, from whichever list it was in.
func (c *cache) touchLocked(b *block) {
	switch {
	case b.spec:
		c.spec.Remove(b.elem)
		b.elem, b.spec = c.lru.PushFront(b), false
	case b.elem != nil:
		c.lru.MoveToFront(b.elem)
	}
}

// anyCached reports whether a block of object seq from first to last-1 is
// cached or being fetched.
func (c *cache) anyCached(seq uint64, first, last int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocks.anyIn(seq, first, last)
}

// tryLookup is lookup for prefetching: it returns nil if key is cached or
// being fetched already.
func (c *cache) tryLookup(key blockKey) *block {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.blocks.get(key) != nil {
		return nil
	}
	b := &block{key: key, ready: make(chan struct{}), pins: 1}
	c.blocks.put(b)
	return b
}

// fill completes a fetch with a copy of src (or with err, which is not
// kept, so the next read tries again). The fetcher's pin stays.
func (c *cache) fill(b *block, src []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b.err = err
	if err == nil && src != nil {
		c.allocLocked(b, len(src))
		copy(b.data, src)
	}
	close(b.ready)
	if err != nil || c.limit == 0 {
		c.blocks.remove(b.key)
		b.evicted = true
		return
	}
	b.elem = c.lru.PushFront(b)
	c.bytes += int64(cap(b.data))
	for c.bytes > c.limit && c.kept() > 0 {
		c.evictLocked(c.victimLocked())
	}
}

// minSpec is the share of the cache (1/minSpec) that speculative blocks
// keep even when the blocks READs asked for would fill it: a random
// reader's fetched neighbours then live for the next limit/minSpec bytes
// of fetches, not only until the next miss.
const minSpec = 8

func (c *cache) kept() int { return c.lru.Len() + c.spec.Len() }

// victimLocked is the block to evict next: the oldest speculative block
// while they hold more than their share, else the least recently used.
func (c *cache) victimLocked() *block {
	if c.lru.Len() == 0 || int64(c.spec.Len())*cacheBlock*minSpec > c.limit {
		return c.spec.Back().Value.(*block)
	}
	return c.lru.Back().Value.(*block)
}

func (c *cache) evictLocked(b *block) {
	if b.spec {
		c.spec.Remove(b.elem)
	} else {
		c.lru.Remove(b.elem)
	}
	b.elem, b.spec = nil, false
	c.blocks.remove(b.key)
	c.bytes -= int64(cap(b.data))
	b.evicted = true
	if b.pins == 0 {
		c.recycleLocked(b)
	}
}

// demote moves b, fetched on speculation and not asked for, to the list
// of speculative blocks, unless someone else holds it. A READ that asks
// for it later moves it back (lookup).
func (c *cache) demote(b *block) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b.elem != nil && !b.spec && b.pins == 1 {
		c.lru.Remove(b.elem)
		b.elem, b.spec = c.spec.PushFront(b), true
	}
}

// release drops a pin taken by lookup or tryLookup.
func (c *cache) release(b *block) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b.pins--
	if b.pins == 0 && b.evicted {
		c.recycleLocked(b)
	}
}

func (c *cache) recycleLocked(b *block) {
	if b.slot != 0 && c.arena != nil {
		c.free = append(c.free, b.slot-1)
	}
	b.data, b.slot = nil, 0
}

// buffers gives the blocks of one GET, which the caller is fetching,
// buffers of sizes[i] bytes, and appends to iov the slices the GET's body
// is read into, in order: a nil block's bytes go to drop and are not
// kept. Consecutive blocks get consecutive arena blocks where they can,
// and those are one slice: the body is then read from the socket in a
// few large reads rather than one per block, which costs far less CPU.
// fill(b, nil, err) then completes each block.
func (c *cache) buffers(iov [][]byte, blocks []*block, sizes []int, drop []byte) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	slots := c.runSlotsLocked(blocks)
	prev := int32(-1) // the arena block that ends iov's last slice, if full
	for i, b := range blocks {
		n := sizes[i]
		if b == nil {
			iov, prev = append(iov, drop[:n]), -1
			continue
		}
		if len(slots) == 0 {
			c.allocLocked(b, n)
			iov, prev = append(iov, b.data), -1
			continue
		}
		s := slots[0]
		slots = slots[1:]
		b.slot, b.data = s+1, c.slotBuf(s)[:n]
		if k := len(iov) - 1; prev >= 0 && s == prev+1 {
			lo := int(s)*cacheBlock - len(iov[k])
			iov[k] = c.arena[lo : int(s)*cacheBlock+n]
		} else {
			iov = append(iov, b.data)
		}
		prev = -1
		if n == cacheBlock {
			prev = s
		}
	}
	return iov
}

// runSlotsLocked takes arena blocks for the non-nil blocks of a run, in
// ascending order: never-used ones first, which are consecutive, then
// ones given back, evicting the oldest blocks for them. Blocks of a
// sequential reader are evicted in the order they were filled, so the
// ones a run gets back usually lie side by side too. It returns fewer
// when every block is pinned; the rest come from the heap.
func (c *cache) runSlotsLocked(blocks []*block) []int32 {
	want := 0
	for _, b := range blocks {
		if b != nil {
			want++
		}
	}
	slots := make([]int32, 0, want)
	for len(slots) < want && c.fresh < c.slots() {
		slots = append(slots, c.fresh)
		c.fresh++
	}
	rest := want - len(slots)
	for len(c.free) < rest && c.kept() > 0 {
		c.evictLocked(c.victimLocked())
	}
	rest = min(rest, len(c.free))
	recycled := c.free[len(c.free)-rest:]
	slices.Sort(recycled)
	slots = append(slots, recycled...)
	c.free = c.free[:len(c.free)-rest]
	return slots
}

// allocLocked gives b a buffer of n bytes from the arena: one never used,
// else one given back, evicting the least recently used blocks if none
// is, and from the heap if every block is pinned.
func (c *cache) allocLocked(b *block, n int) {
	if n <= cacheBlock {
		if s, ok := c.takeSlotLocked(); ok {
			b.slot, b.data = s+1, c.slotBuf(s)[:n]
			return
		}
	}
	b.slot, b.data = 0, make([]byte, n, max(n, cacheBlock))
}

func (c *cache) takeSlotLocked() (int32, bool) {
	if c.fresh < c.slots() {
		c.fresh++
		return c.fresh - 1, true
	}
	for len(c.free) == 0 && c.kept() > 0 {
		c.evictLocked(c.victimLocked())
	}
	k := len(c.free)
	if k == 0 {
		return 0, false
	}
	s := c.free[k-1]
	c.free = c.free[:k-1]
	return s, true
}

// drop forgets every block of segment seq (it was deleted).
func (c *cache) drop(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, ch := range c.blocks {
		if k.seq != seq {
			continue
		}
		for _, b := range ch.blocks {
			if b != nil && b.elem != nil {
				c.evictLocked(b)
			}
		}
	}
}

// size returns the bytes held.
func (c *cache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// dropBuffers hold the bytes of a GET that belong to blocks its fetcher
// does not fill (fetchBlocks): one block's worth, which every such block
// of the GET overwrites.
var dropBuffers = sync.Pool{New: func() any { b := make([]byte, cacheBlock); return &b }}

// runBuffers holds the buffers of GETs in flight, maxRun blocks each.
var runBuffers = sync.Pool{New: func() any { b := make([]byte, maxRun*cacheBlock); return &b }}

// copyCached copies the bytes at object offset objOff of segment seq into
// dst and reports true if every block holding them is cached; otherwise
// it copies nothing useful, fetches nothing and reports false. The blocks
// count as used, as lookup counts them.
func (c *cache) copyCached(seq uint64, objOff int64, dst []byte) bool {
	first := objOff / cacheBlock
	last := (objOff + int64(len(dst)) - 1) / cacheBlock
	c.mu.Lock()
	defer c.mu.Unlock()
	for idx := first; idx <= last; idx++ {
		b := c.blocks.get(blockKey{seq, idx})
		if b == nil || b.elem == nil {
			return false // absent, or still being fetched
		}
		bOff := idx * cacheBlock
		lo := max(objOff, bOff)
		hi := min(objOff+int64(len(dst)), bOff+cacheBlock)
		if hi-bOff > int64(len(b.data)) {
			return false // short: ReadAt reports it
		}
		copy(dst[lo-objOff:hi-objOff], b.data[lo-bOff:hi-bOff])
		c.touchLocked(b)
	}
	return true
}
