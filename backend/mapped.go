//go:build linux

package backend

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// trackShift is log2 of the block size (64 KiB) in which a Mapped
	// tracks which ranges hold data and which must be written back.
	trackShift = 16
	trackSize  = 1 << trackShift
	// loadChunk is how much LoadMapped reads from the image at a time.
	loadChunk = 4 << 20
	// maxWriteBack caps one pwrite of Sync, in blocks (4 MiB).
	maxWriteBack = loadChunk >> trackShift
)

// Mapped is a memory export held in its own anonymous private mapping,
// outside the Go heap, so that the kernel's same-page merging (KSM) can
// merge identical pages across exports and processes, and so that freeing
// memory on TRIM is an madvise rather than work for the garbage collector.
//
// Reads and writes are plain copies with no lock, like a disk: concurrent
// writes to overlapping ranges may interleave, which NBD allows. Mapped
// implements Trimmer, FastZeroer, Extenter, Cacher and MultiConner. Close
// must not run concurrently with other methods.
type Mapped struct {
	mem      []byte // the mapping, a whole number of pages
	size     int64
	pageSize int64
	written  bitmap // blocks that may hold data, for Extents

	// Persistence; file is nil for an ephemeral export.
	file  *os.File
	dirty bitmap // blocks changed since the last Sync
	// unsynced are blocks written back to the image but not yet covered
	// by a successful fdatasync: if it fails they are dirty again, for
	// the kernel may have dropped the pages it failed to write.
	unsynced bitmap
	syncMu   sync.Mutex // serialises Sync, so each fdatasync covers its own writeback
}

// NewMapped maps size bytes of zeroed anonymous memory (MAP_NORESERVE, so
// untouched pages cost nothing) and, if mergeable, marks it MADV_MERGEABLE
// for KSM.
func NewMapped(size int64, mergeable bool) (*Mapped, error) {
	if size < 0 || size > maxMappedSize {
		return nil, fmt.Errorf("mapped export: size %d out of range (0 to %d)", size, int64(maxMappedSize))
	}
	ps := int64(unix.Getpagesize())
	length := max((size+ps-1)/ps*ps, ps) // mmap refuses length 0
	mem, err := unix.Mmap(-1, 0, int(length), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", length, err)
	}
	m := &Mapped{mem: mem, size: size, pageSize: ps, written: newBitmap(blocks(size))}
	if mergeable {
		if err := unix.Madvise(mem, unix.MADV_MERGEABLE); err != nil {
			unix.Munmap(mem)
			if errors.Is(err, unix.EINVAL) {
				return nil, fmt.Errorf("madvise MADV_MERGEABLE: kernel lacks KSM (CONFIG_KSM): %w", err)
			}
			return nil, fmt.Errorf("madvise MADV_MERGEABLE: %w", err)
		}
	}
	return m, nil
}

// maxMappedSize bounds NewMapped's size far below 2^63, where rounding it
// up to whole pages or tracking blocks would overflow; no address space
// holds that much anyway (x86-64 user space is 2^47 bytes), so mmap fails
// cleanly below it.
const maxMappedSize = 1 << 62

// blocks returns how many tracking blocks cover size bytes.
func blocks(size int64) int64 { return (size + trackSize - 1) >> trackShift }

// LoadMapped creates a Mapped the size of the image file or block device at
// path and copies the image in, 4 MiB at a time. Blocks of zeroes are not
// copied, so they stay unallocated and are reported as holes.
//
// If persist is set, the image is kept open and Sync writes the blocks
// changed since the previous Sync back to it, then calls fdatasync; Close
// syncs too. Otherwise the export is ephemeral: the image is only read and
// Sync does nothing.
func LoadMapped(path string, mergeable, persist bool) (*Mapped, error) {
	f, err := openImage(path, !persist, 0)
	if err != nil {
		return nil, err
	}
	m, err := loadMapped(f, mergeable)
	if err != nil || !persist {
		f.Close()
		return m, err
	}
	m.file = f
	m.dirty = newBitmap(blocks(m.size))
	m.unsynced = newBitmap(blocks(m.size))
	return m, nil
}

// loadMapped maps memory for f and copies f in.
func loadMapped(f *os.File, mergeable bool) (*Mapped, error) {
	size, err := fileSize(f)
	if err != nil {
		return nil, err
	}
	m, err := NewMapped(size, mergeable)
	if err != nil {
		return nil, err
	}
	if err := m.load(f); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// load copies the non-zero blocks of r into the mapping.
func (m *Mapped) load(r io.ReaderAt) error {
	buf := make([]byte, loadChunk)
	for off := int64(0); off < m.size; off += loadChunk {
		n := int(min(loadChunk, m.size-off))
		if _, err := r.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("load mapped image at offset %d: %w", off, err)
		}
		for lo := 0; lo < n; lo += trackSize {
			blk := buf[lo:min(lo+trackSize, n)]
			if bytes.Equal(blk, zeroBuf[:len(blk)]) {
				continue
			}
			i := (off + int64(lo)) >> trackShift
			m.written.set(i, i+1)
			copy(m.mem[off+int64(lo):], blk)
		}
	}
	return nil
}

// Base returns the address of the mapping, so that the ksm package can
// find its VMA in /proc/self/smaps.
func (m *Mapped) Base() uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(m.mem))) }

// Len returns the length of the mapping: the export size rounded up to
// whole pages (at least one page).
func (m *Mapped) Len() int { return len(m.mem) }

// Bytes returns the export's memory, for zero-copy replies. The caller must
// not write to it or use it after Close.
func (m *Mapped) Bytes() []byte { return m.mem[:m.size:m.size] }

// Size returns the export size.
func (m *Mapped) Size() (int64, error) { return m.size, nil }

// NonBlocking reports true: a Mapped export is anonymous memory (page
// faults aside), so the server may serve small requests inline.
func (m *Mapped) NonBlocking() bool { return true }

// CanMultiConn reports true: every connection sees the same memory.
func (m *Mapped) CanMultiConn() bool { return true }

// CanFastZero reports true: zeroing is an madvise.
func (m *Mapped) CanFastZero() bool { return true }

// Cache does nothing: the data is already in memory.
func (m *Mapped) Cache(off, length int64) error {
	return checkRange("cache", off, length, m.size)
}

// ReadAt copies from the export into p. A read running past the end is cut
// short with an error matching both ErrOutOfRange and io.EOF.
func (m *Mapped) ReadAt(p []byte, off int64) (int, error) {
	n, err := readLimit(len(p), off, m.size)
	if n > 0 {
		copy(p[:n], m.mem[off:])
	}
	return n, err
}

// WriteAt copies p into the export. A write running past the end writes
// nothing and returns ErrOutOfRange.
func (m *Mapped) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("write", off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	lo, hi := m.blockRange(off, int64(len(p)))
	m.written.set(lo, hi) // before the copy: Extents may say data early, never zero late
	copy(m.mem[off:], p)
	// Again after the copy: a WriteZeroes racing with this write may have
	// cleared the bits in between, and its zeroing (which follows its
	// clearing) may have come before the copy.
	m.written.set(lo, hi)
	m.markDirty(lo, hi) // after the copy, so a Sync that clears the bit saw the data
	return len(p), nil
}

// blockRange returns the tracking blocks [lo, hi) that the n > 0 bytes at
// off touch.
func (m *Mapped) blockRange(off, n int64) (lo, hi int64) {
	return off >> trackShift, (off+n-1)>>trackShift + 1
}

// markDirty records blocks [lo, hi) for the next Sync of a persistent
// export.
func (m *Mapped) markDirty(lo, hi int64) {
	if m.file != nil {
		m.dirty.set(lo, hi)
	}
}

// Trim zeroes [off, off+length): whole pages are returned to the kernel
// with MADV_DONTNEED and partial pages are cleared. Blocks covered entirely
// are then reported as holes.
func (m *Mapped) Trim(off, length int64) error {
	return m.WriteZeroes(off, length, false, false)
}

// WriteZeroes zeroes [off, off+length) as Trim does. With noHole set the
// range is still reported as data by Extents. Zeroing is always fast.
func (m *Mapped) WriteZeroes(off, length int64, noHole, fast bool) error {
	if err := checkRange("write zeroes", off, length, m.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	// Bits cleared before the memory: a racing write sets its bits again
	// after its copy, so a block is never left marked a hole over data.
	if !noHole {
		m.written.unset(m.fullBlocks(off, off+length))
	}
	m.zero(off, off+length)
	lo, hi := m.blockRange(off, length)
	m.markDirty(lo, hi)
	return nil
}

// fullBlocks returns the tracking blocks that [off, end) covers entirely,
// counting the short last block when end is the export size.
func (m *Mapped) fullBlocks(off, end int64) (lo, hi int64) {
	lo, hi = (off+trackSize-1)>>trackShift, end>>trackShift
	if end == m.size {
		hi = blocks(m.size)
	}
	return lo, max(lo, hi)
}

// zero clears [off, end), dropping the whole pages inside it.
func (m *Mapped) zero(off, end int64) {
	ps := m.pageSize
	lo, hi := (off+ps-1)/ps*ps, end/ps*ps
	if end == m.size {
		hi = int64(len(m.mem)) // the tail page beyond size is ours too
	}
	if hi <= lo || unix.Madvise(m.mem[lo:hi], unix.MADV_DONTNEED) != nil {
		clear(m.mem[off:end]) // madvise only fails for ranges we never pass it
		return
	}
	clear(m.mem[off:lo])
	clear(m.mem[min(hi, end):end])
}

// Extents reports blocks never written, or entirely trimmed, as
// ExtentHole|ExtentZero and the others as data (flags 0), at 64 KiB
// granularity, merging neighbours.
func (m *Mapped) Extents(off, length int64, fn func(Extent) bool) error {
	if err := checkRange("extents", off, length, m.size); err != nil {
		return err
	}
	return blockExtents(off, length, trackShift, func(i int64) (bool, int64) {
		return m.written.get(i), i + 1
	}, fn)
}

// Sync writes the blocks changed since the last Sync back to the image
// with pwrite, then calls fdatasync, returning the first error. Blocks that
// failed to write stay dirty for the next Sync, and so do all the blocks
// written back since the last successful fdatasync when fdatasync fails:
// Linux reports a failed writeback once and may drop the pages, so the
// next Sync writes them again from memory, which still holds them. For an
// ephemeral export Sync does nothing.
func (m *Mapped) Sync() error {
	if m.file == nil {
		return nil
	}
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	err := m.dirty.drain(maxWriteBack, func(r blockRun) error {
		lo, hi := r.lo<<trackShift, min(r.hi<<trackShift, m.size)
		if _, err := m.file.WriteAt(m.mem[lo:hi], lo); err != nil {
			return fmt.Errorf("write back mapped export: %w", err)
		}
		m.unsynced.set(r.lo, r.hi)
		return nil
	})
	if err != nil {
		return err
	}
	if err := fdatasync(int(m.file.Fd())); err != nil {
		m.unsynced.drain(maxWriteBack, func(r blockRun) error {
			m.dirty.set(r.lo, r.hi)
			return nil
		})
		return fmt.Errorf("fdatasync %s: %w", m.file.Name(), err)
	}
	m.unsynced.drain(maxWriteBack, func(blockRun) error { return nil })
	return nil
}

// SyncWaits reports whether Sync writes to a file (a persistent export,
// see LoadMapped), which may wait on its device.
func (m *Mapped) SyncWaits() bool { return m.file != nil }

// fdatasync is unix.Fdatasync; tests replace it to make it fail.
var fdatasync = unix.Fdatasync

// Close writes a persistent export back (see Sync), closes its image and
// unmaps the memory. The Mapped must not be used afterwards, but Close may
// be called again.
func (m *Mapped) Close() error {
	var errs []error
	if m.file != nil {
		errs = append(errs, m.Sync(), m.file.Close())
		m.file = nil
	}
	if m.mem != nil {
		if err := unix.Munmap(m.mem); err != nil {
			errs = append(errs, fmt.Errorf("munmap: %w", err))
		}
		m.mem = nil
	}
	return errors.Join(errs...)
}
