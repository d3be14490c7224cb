package logdisk

import (
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
	if _, ok := c.blocks[blockKey{seq: 1, idx: 0}]; ok {
		t.Fatal("the least recently used block is still cached")
	}
}
