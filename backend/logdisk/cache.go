package logdisk

import (
	"container/list"
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
	blocks map[blockKey]*block
	lru    list.List // of *block asked for, most recent at the front
	spec   list.List // of *block fetched on speculation, newest at the front
	free   [][]byte  // buffers of the arena given back
	arena  []byte
	fresh  int64 // arena blocks handed out so far; those after were never used
}

func newCache(limit int64) *cache {
	c := &cache{limit: max(limit, 0), blocks: map[blockKey]*block{}}
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

// takeFreshLocked returns the next arena block never handed out, or nil
// when every one has been.
func (c *cache) takeFreshLocked() []byte {
	if c.fresh >= int64(len(c.arena))/cacheBlock {
		return nil
	}
	i := c.fresh
	c.fresh++
	return c.arena[i*cacheBlock : (i+1)*cacheBlock : (i+1)*cacheBlock]
}

// close releases the arena. No block may be used afterwards.
func (c *cache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arena != nil {
		unix.Munmap(c.arena)
		c.arena, c.free, c.fresh = nil, nil, 0
		c.blocks = map[blockKey]*block{}
		c.lru.Init()
		c.spec.Init()
		c.bytes = 0
	}
}

// lookup returns the block for key, pinned, and true if the caller must
// fetch it (it was absent and is now registered as being fetched).
func (c *cache) lookup(key blockKey) (*block, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.blocks[key]; ok {
		c.touchLocked(b)
		b.pins++
		return b, false
	}
	b := &block{key: key, ready: make(chan struct{}), pins: 1}
	c.blocks[key] = b
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

// tryLookup is lookup for prefetching: it returns nil if key is cached or
// being fetched already.
func (c *cache) tryLookup(key blockKey) *block {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.blocks[key]; ok {
		return nil
	}
	b := &block{key: key, ready: make(chan struct{}), pins: 1}
	c.blocks[key] = b
	return b
}

// fill completes a fetch with a copy of src (or with err, which is not
// kept, so the next read tries again). The fetcher's pin stays.
func (c *cache) fill(b *block, src []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b.err = err
	if err == nil && src != nil {
		b.data = c.allocLocked(len(src))
		copy(b.data, src)
	}
	close(b.ready)
	if err != nil || c.limit == 0 {
		delete(c.blocks, b.key)
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
	delete(c.blocks, b.key)
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
	if cap(b.data) == cacheBlock && int64(len(c.free)) < c.fresh {
		c.free = append(c.free, b.data[:cacheBlock])
	}
	b.data = nil
}

// buffer gives b, being fetched by the caller, a buffer of n bytes to read
// into; fill(b, nil, err) then completes it.
func (c *cache) buffer(b *block, n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b.data = c.allocLocked(n)
	return b.data
}

// allocLocked takes a buffer from the arena: one never used, else one
// given back, evicting the least recently used blocks if none is, and
// from the heap if every block is pinned.
func (c *cache) allocLocked(n int) []byte {
	if n <= cacheBlock {
		if buf := c.takeFreshLocked(); buf != nil {
			return buf[:n]
		}
	}
	for len(c.free) == 0 && c.kept() > 0 && n <= cacheBlock {
		c.evictLocked(c.victimLocked())
	}
	if k := len(c.free); k > 0 && n <= cacheBlock {
		buf := c.free[k-1]
		c.free = c.free[:k-1]
		return buf[:n]
	}
	return make([]byte, n, cacheBlock)
}

// drop forgets every block of segment seq (it was deleted).
func (c *cache) drop(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, b := range c.blocks {
		if k.seq == seq && b.elem != nil {
			c.evictLocked(b)
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
		b, ok := c.blocks[blockKey{seq, idx}]
		if !ok || b.elem == nil {
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
