package logdisk

import (
	"container/list"
	"sync"
)

// cacheBlock is the unit of the read cache: 64 KiB of one object, aligned.
const cacheBlock = 64 << 10

type blockKey struct {
	seq uint64
	idx int64 // object offset / cacheBlock
}

// block is one cached block, or one being fetched (ready not yet closed).
type block struct {
	key   blockKey
	data  []byte
	err   error
	ready chan struct{}
	elem  *list.Element // in cache.lru, once ready and kept
}

// cache holds recently read blocks of segment objects, least recently
// used first out, within limit bytes. Blocks of immutable objects never go
// stale.
type cache struct {
	mu     sync.Mutex
	limit  int64
	bytes  int64
	blocks map[blockKey]*block
	lru    list.List // of *block, most recent at the front
}

func newCache(limit int64) *cache {
	return &cache{limit: max(limit, 0), blocks: map[blockKey]*block{}}
}

// lookup returns the block for key, and true if the caller must fetch it
// (it was absent and is now registered as being fetched).
func (c *cache) lookup(key blockKey) (*block, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.blocks[key]; ok {
		if b.elem != nil {
			c.lru.MoveToFront(b.elem)
		}
		return b, false
	}
	b := &block{key: key, ready: make(chan struct{})}
	c.blocks[key] = b
	return b, true
}

// present reports whether key is cached or being fetched.
func (c *cache) present(key blockKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.blocks[key]
	return ok
}

// fill completes a fetch: the block keeps data (or err, which is not
// kept, so the next read tries again).
func (c *cache) fill(b *block, data []byte, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b.data, b.err = data, err
	close(b.ready)
	if err != nil || c.limit == 0 {
		delete(c.blocks, b.key)
		return
	}
	b.elem = c.lru.PushFront(b)
	c.bytes += int64(cap(data))
	for c.bytes > c.limit && c.lru.Len() > 0 {
		old := c.lru.Remove(c.lru.Back()).(*block)
		delete(c.blocks, old.key)
		c.bytes -= int64(cap(old.data))
	}
}

// drop forgets every block of segment seq (it was deleted).
func (c *cache) drop(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, b := range c.blocks {
		if k.seq == seq && b.elem != nil {
			c.lru.Remove(b.elem)
			delete(c.blocks, k)
			c.bytes -= int64(cap(b.data))
		}
	}
}

// size returns the bytes held.
func (c *cache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
