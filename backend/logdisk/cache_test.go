package logdisk

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestCacheArenaHandedOutOnce: the arena's blocks are handed out in
// order, each once, before any block is evicted; after that a new block
// takes the least recently used one's buffer, and nothing comes from the
// heap while a block can be evicted.
func TestCacheArenaHandedOutOnce(t *testing.T) {
	const blocks = 8
	c := newCache(blocks * cacheBlock)
	defer c.close()
	if len(c.free) != 0 {
		t.Fatalf("a new cache set up %d free buffers; want none (the arena is handed out as used)", len(c.free))
	}
	inArena := func(buf []byte) int64 {
		off := int64(uintptr(unsafe.Pointer(unsafe.SliceData(buf))) - uintptr(unsafe.Pointer(unsafe.SliceData(c.arena))))
		if off < 0 || off >= int64(len(c.arena)) || off%cacheBlock != 0 {
			t.Fatalf("buffer at arena offset %d: not an arena block", off)
		}
		return off / cacheBlock
	}
	fill := func(i int) *block {
		b, _ := c.lookup(blockKey{seq: 1, idx: int64(i)})
		c.fill(b, make([]byte, cacheBlock), nil)
		c.release(b)
		return b
	}
	for i := range blocks {
		if got := inArena(fill(i).data); got != int64(i) {
			t.Fatalf("block %d got arena block %d; want them in order", i, got)
		}
	}
	if c.lru.Len() != blocks {
		t.Fatalf("%d blocks cached; want %d (none evicted while the arena had room)", c.lru.Len(), blocks)
	}
	if got := inArena(fill(blocks).data); got != 0 {
		t.Fatalf("a block past the arena got arena block %d; want 0, the least recently used one's", got)
	}
	if c.blocks.get(blockKey{seq: 1, idx: 0}) != nil {
		t.Fatal("the least recently used block is still cached")
	}
}

// TestCacheSpeculativeOldestFirst: blocks fetched on speculation leave a
// full cache oldest first, before the blocks READs asked for while they
// hold more than their share, and the asked-for blocks go least recently
// used first once they do not.
func TestCacheSpeculativeOldestFirst(t *testing.T) {
	const n = 2 * minSpec // blocks the cache holds; minSpec's share is 2
	c := newCache(n * cacheBlock)
	defer c.close()
	key := func(i int) blockKey { return blockKey{seq: 1, idx: int64(i)} }
	add := func(i int, spec bool) {
		b, fetch := c.lookup(key(i))
		if !fetch {
			t.Fatalf("block %d: cached already", i)
		}
		c.fill(b, make([]byte, cacheBlock), nil)
		if spec {
			c.demote(b)
		}
		c.release(b)
	}
	cached := func(i int) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.blocks.get(key(i)) != nil
	}
	for i := range n / 2 {
		add(i, false) // asked for: 0 .. n/2-1
	}
	for i := n / 2; i < n; i++ {
		add(i, true) // speculative: n/2 .. n-1, oldest first
	}
	add(n, false)
	if cached(n / 2) {
		t.Fatal("the oldest speculative block outlived a new block")
	}
	if !cached(n-1) || !cached(0) {
		t.Fatal("a newer speculative block or an asked-for block went before the oldest speculative one")
	}
	// A READ that finds a speculative block makes it an asked-for one.
	if b, fetch := c.lookup(key(n/2 + 1)); fetch {
		t.Fatal("block lost")
	} else {
		c.release(b)
	}
	for i := n + 1; i < 2*n; i++ {
		add(i, false)
	}
	if c.spec.Len()*minSpec > n {
		t.Fatalf("%d speculative blocks left, want at most the share of %d", c.spec.Len(), n/minSpec)
	}
	if c.spec.Len() == 0 {
		t.Fatal("the speculative blocks lost their share to blocks asked for")
	}
	if cached(0) {
		t.Fatal("the least recently used asked-for block outlived newer ones")
	}
	if got := c.size(); got > n*cacheBlock {
		t.Fatalf("the cache holds %d bytes, over its limit %d", got, n*cacheBlock)
	}
}

// TestCacheRunBuffersOneSlice: the blocks of one GET get consecutive
// arena blocks, as one slice for the body to be read into, both from a
// fresh arena and from blocks a sequential reader's earlier GETs filled
// and the cache evicted; a block the GET drops breaks the slice.
func TestCacheRunBuffersOneSlice(t *testing.T) {
	const run = 8
	c := newCache(2 * run * cacheBlock)
	defer c.close()
	drop := make([]byte, cacheBlock)
	get := func(first int, skip int) [][]byte {
		blocks := make([]*block, run)
		sizes := make([]int, run)
		for i := range blocks {
			sizes[i] = cacheBlock
			if i == skip {
				continue
			}
			b, fetch := c.lookup(blockKey{seq: 1, idx: int64(first + i)})
			if !fetch {
				t.Fatalf("block %d: cached already", first+i)
			}
			blocks[i] = b
		}
		iov := c.buffers(nil, blocks, sizes, drop)
		pos := 0
		for _, v := range iov { // the GET's body: each block's own byte
			for j := range v {
				v[j] = byte(first + (pos+j)/cacheBlock)
			}
			pos += len(v)
		}
		for i, b := range blocks {
			if b == nil {
				continue
			}
			if want := bytes.Repeat([]byte{byte(first + i)}, cacheBlock); !bytes.Equal(b.data, want) {
				t.Fatalf("block %d does not hold its part of the body", first+i)
			}
			c.fill(b, nil, nil)
			c.release(b)
		}
		return iov
	}
	for i := range 4 {
		iov := get(i*run, -1)
		if len(iov) != 1 || len(iov[0]) != run*cacheBlock {
			t.Fatalf("GET %d: %d slices; want 1 of %d bytes", i, len(iov), run*cacheBlock)
		}
	}
	if iov := get(4*run, 3); len(iov) != 3 {
		t.Fatalf("a GET dropping its 4th block: %d slices; want 3 (before it, it, after it)", len(iov))
	}
	if got := c.size(); got > 2*run*cacheBlock {
		t.Fatalf("the cache holds %d bytes, over its limit %d", got, 2*run*cacheBlock)
	}
}

// TestBlockIndex: blocks are found by key across runs and segments, a
// run's entry goes when its last block does, and removing a block that
// is not there changes nothing.
func TestBlockIndex(t *testing.T) {
	x := blockIndex{}
	keys := []blockKey{{1, 0}, {1, maxRun - 1}, {1, maxRun}, {2, 0}, {1, 5 * maxRun}}
	for _, k := range keys {
		x.put(&block{key: k})
	}
	if got, want := len(x), 4; got != want {
		t.Fatalf("%d runs indexed, want %d", got, want)
	}
	for _, k := range keys {
		if b := x.get(k); b == nil || b.key != k {
			t.Fatalf("block %v not found", k)
		}
	}
	if x.get(blockKey{1, 1}) != nil || x.get(blockKey{3, 0}) != nil {
		t.Fatal("found a block never put")
	}
	x.remove(blockKey{1, 1}) // not there
	x.remove(blockKey{1, 0})
	if x.get(blockKey{1, maxRun - 1}) == nil || x.len() != len(keys)-1 {
		t.Fatalf("removing one block lost another: %d left, want %d", x.len(), len(keys)-1)
	}
	x.remove(blockKey{1, maxRun - 1})
	if _, ok := x[blockKey{1, 0}]; ok {
		t.Fatal("a run whose blocks are all gone is still indexed")
	}
}
