package backend

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// chunkPool supplies the chunks of one Memory. Without preallocation each
// chunk is a new Go allocation whose pages are faulted in with one system
// call before the first write lands in them; after Preallocate, chunks come
// from a free list made up front, and chunks that Trim drops go back to it.
type chunkPool struct {
	mu       sync.Mutex
	prealloc bool     // set once, before the Memory is shared
	free     []*chunk // cleared chunks, pages resident; guarded by mu
}

// get returns a zeroed chunk.
func (p *chunkPool) get() *chunk {
	if p.prealloc {
		p.mu.Lock()
		if n := len(p.free); n > 0 {
			c := p.free[n-1]
			p.free = p.free[:n-1]
			p.mu.Unlock()
			return c
		}
		p.mu.Unlock()
	}
	c := new(chunk)
	populate(c[:])
	return c
}

// put takes back a chunk dropped from the tree. Without preallocation it
// is left to the garbage collector.
func (p *chunkPool) put(c *chunk) {
	if !p.prealloc {
		return
	}
	clear(c[:])
	p.mu.Lock()
	p.free = append(p.free, c)
	p.mu.Unlock()
}

// populate faults in b's pages with one madvise(MADV_POPULATE_WRITE)
// rather than one page fault per 4 KiB page as the first write copies in
// (docs/performance.md, "First fill"). Kernels before 5.14 refuse the
// advice (EINVAL), and then the pages fault in as before.
func populate(b []byte) {
	_ = unix.Madvise(b, unix.MADV_POPULATE_WRITE)
}

// Preallocate allocates the whole export now, its pages faulted in, as
// nbdkit's memory plugin does with allocator=malloc: a first write to any
// part of the export then costs no allocation and no page fault, at the
// price of holding the export's size in memory from the start. Space never
// written still reads as zeroes and is reported as a hole: the chunks wait
// on a free list until written, and Trim returns them there, cleared.
// Call it before the Memory serves requests. It refuses an export larger
// than the machine's memory.
func (m *Memory) Preallocate() error {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return fmt.Errorf("preallocate: %w", err)
	}
	if total := uint64(si.Totalram) * uint64(si.Unit); uint64(m.size) > total {
		return fmt.Errorf("preallocate %d bytes: more than the machine's %d bytes of memory", m.size, total)
	}
	n := (m.size + chunkSize - 1) / chunkSize
	free := make([]*chunk, 0, n)
	for range n {
		c := new(chunk)
		populate(c[:])
		free = append(free, c)
	}
	m.chunks.mu.Lock()
	defer m.chunks.mu.Unlock()
	m.chunks.free = append(m.chunks.free, free...)
	m.chunks.prealloc = true
	return nil
}
