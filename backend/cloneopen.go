//go:build linux

package backend

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// CreateOverlay creates an empty overlay file at path for clones of base,
// with blocks of blockSize bytes (0 means DefaultCloneBlockSize), whole
// or not at all (CreateImageFile). It fails, with an error matching
// fs.ErrExist, if path exists.
func CreateOverlay(path string, base *CloneBase, blockSize int) error {
	h, err := newHeader(base, blockSize)
	if err != nil {
		return err
	}
	if h.basePath, err = basePathFrom(path, base.path); err != nil {
		return err
	}
	err = CreateImageFile(path, 0o600, func(f *os.File) error { return writeNewOverlay(f, &h) })
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	return nil
}

// newHeader returns the header of a new overlay over base, but for the
// base's path.
func newHeader(base *CloneBase, blockSize int) (overlayHeader, error) {
	if blockSize == 0 {
		blockSize = DefaultCloneBlockSize
	}
	if blockSize < MinCloneBlockSize || blockSize > MaxCloneBlockSize || blockSize&(blockSize-1) != 0 {
		return overlayHeader{}, fmt.Errorf("clone block size %d: want a power of 2 from %d to %d", blockSize, MinCloneBlockSize, MaxCloneBlockSize)
	}
	h := overlayHeader{size: base.size, baseModTime: base.modTime, fingerprint: base.fingerprint}
	for 1<<h.blockShift < blockSize {
		h.blockShift++
	}
	if h.blocks() > maxCloneBlocks {
		return overlayHeader{}, fmt.Errorf("base %s: %d bytes is too large for clones of %d-byte blocks (at most %d blocks)", base.path, base.size, blockSize, int64(maxCloneBlocks))
	}
	h.dataOff = overlayDataOffset(h.blocks())
	return h, nil
}

// basePathFrom returns how the header of an overlay at path names base:
// relative to the overlay's directory when the base can be reached from
// there (so that a directory of a base and its overlays can be moved
// whole), absolute otherwise.
func basePathFrom(path, base string) (string, error) {
	absBase, err := filepath.Abs(base)
	if err != nil {
		return "", err
	}
	absDir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	name := absBase
	if rel, err := filepath.Rel(absDir, absBase); err == nil {
		name = rel
	}
	if len(name) > maxBasePath {
		return "", fmt.Errorf("base path %s: longer than the %d bytes an overlay header holds", base, maxBasePath)
	}
	return name, nil
}

// writeNewOverlay writes the header of a new overlay, reserves its map
// (so that a FLUSH never fails for want of space for the map) and sizes
// the file.
func writeNewOverlay(f *os.File, h *overlayHeader) error {
	if _, err := f.WriteAt(h.encode(), 0); err != nil {
		return err
	}
	mapEnd := slotOffset(mapPages(h.blocks()), 0)
	if err := unix.Fallocate(int(f.Fd()), 0, headerSize, mapEnd-headerSize); err != nil && !unsupported(err) {
		return fmt.Errorf("reserve the map: %w", err)
	}
	return f.Truncate(h.dataOff + h.blocks()<<h.blockShift)
}

// OpenClone opens the overlay at path as a clone of base. The overlay is
// locked (flock) for the life of the Clone: exclusively when writable, so
// that two writers never share it, from any process; shared when
// readOnly. It fails with ErrBaseChanged if base is not the image the
// overlay was made over, and with ErrOverlayCorrupt if the overlay
// cannot be trusted.
func OpenClone(path string, base *CloneBase, readOnly bool) (*Clone, error) {
	f, err := openImage(path, readOnly, 0)
	if err != nil {
		return nil, err
	}
	if err := lockOverlay(f, readOnly); err != nil {
		f.Close()
		return nil, err
	}
	fb, err := NewFile(f, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	c, err := openCloneOn(fb, base, readOnly)
	if err != nil {
		fb.Close()
		return nil, fmt.Errorf("overlay %s: %w", path, err)
	}
	return c, nil
}

// lockOverlay takes the overlay's lock without waiting.
func lockOverlay(f *os.File, shared bool) error {
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return fmt.Errorf("%w: %s is open in another process or export", ErrOverlayInUse, f.Name())
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
}

// openCloneOn reads the header and map of the overlay in ov and checks
// them against base.
func openCloneOn(ov overlayStore, base *CloneBase, readOnly bool) (*Clone, error) {
	h, err := readHeader(ov)
	if err != nil {
		return nil, err
	}
	if err := base.check(&h); err != nil {
		return nil, err
	}
	c, err := loadOverlay(ov, base.b, &h, readOnly)
	if err != nil {
		return nil, err
	}
	c.cb = base
	return c, nil
}

// readHeader reads and decodes the header of the overlay in ov.
func readHeader(ov overlayStore) (overlayHeader, error) {
	b := make([]byte, headerSize)
	if _, err := ov.ReadAt(b, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return overlayHeader{}, fmt.Errorf("%w: shorter than its header", ErrOverlayCorrupt)
		}
		return overlayHeader{}, fmt.Errorf("read overlay header: %w", err)
	}
	return decodeHeader(b)
}

// loadOverlay checks that ov holds the whole overlay h describes, before
// anything is allocated for its map, then reads the map.
func loadOverlay(ov overlayStore, base Backend, h *overlayHeader, readOnly bool) (*Clone, error) {
	if s, ok := ov.(interface{ Size() (int64, error) }); ok {
		size, err := s.Size()
		if err != nil {
			return nil, err
		}
		if want := h.dataOff + h.blocks()<<h.blockShift; size < want {
			return nil, fmt.Errorf("%w: %d bytes, its header needs %d", ErrOverlayCorrupt, size, want)
		}
	}
	c := newClone(base, ov, h, readOnly, false)
	if err := c.loadMap(); err != nil {
		return nil, err
	}
	return c, nil
}

// loadMap reads both slots of every map page and keeps the valid one with
// the higher generation (see decodeSlot). A page with no valid slot was
// never durably written: all its blocks are from the base.
func (c *Clone) loadMap() error {
	const batch = 128 // pages per read: 1 MiB
	buf := make([]byte, 2*slotSize*batch)
	words := [2][]uint64{make([]uint64, pageWords), make([]uint64, pageWords)}
	pages := int64(len(c.slots))
	for first := int64(0); first < pages; first += batch {
		n := min(batch, pages-first)
		b := buf[:2*slotSize*n]
		if _, err := c.ov.ReadAt(b, slotOffset(first, 0)); err != nil {
			return fmt.Errorf("read map: %w", err)
		}
		for k := range n {
			if err := c.loadPage(first+k, b[2*slotSize*k:], words); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadPage picks the current slot of map page p from its two slots in b.
func (c *Clone) loadPage(p int64, b []byte, words [2][]uint64) error {
	var st [2]slotStatus
	var gen [2]uint64
	for s := range 2 {
		var err error
		st[s], gen[s], err = decodeSlot(b[s*slotSize:], p, c.nblocks, words[s])
		if err != nil {
			return err
		}
	}
	cur := -1
	for s := range 2 {
		if st[s] == slotValid && (cur < 0 || gen[s] > gen[cur]) {
			cur = s
		}
	}
	if cur < 0 {
		if st[0] == slotTorn && st[1] == slotTorn {
			return fmt.Errorf("%w: map page %d: both copies are damaged", ErrOverlayCorrupt, p)
		}
		return nil // never written whole: every block from the base
	}
	c.slots[p] = slotRef{cur: int8(cur), gen: gen[cur]}
	c.states.loadPage(p, words[cur])
	c.markDurable(p, words[cur])
	return nil
}

// markDurable records which blocks of map page p are data in words, the
// page as the map on disk now has it.
func (c *Clone) markDurable(p int64, words []uint64) {
	for k := 0; k < pageWords/2; k++ {
		lo, hi := dataBits(words[2*k]), dataBits(words[2*k+1])
		c.durable[p*pageWords/2+int64(k)].Store(lo | hi<<32)
	}
}

// dataBits returns a bit for each of the 32 blocks of w: set where the
// block is in stateData.
func dataBits(w uint64) uint64 {
	x := w &^ (w >> 1) & 0x5555555555555555 // pattern 01
	x = (x | x>>1) & 0x3333333333333333
	x = (x | x>>2) & 0x0f0f0f0f0f0f0f0f
	x = (x | x>>4) & 0x00ff00ff00ff00ff
	x = (x | x>>8) & 0x0000ffff0000ffff
	return (x | x>>16) & 0x00000000ffffffff
}

// NewTempClone returns a throw-away clone of base: its overlay is an
// unnamed file in dir (O_TMPFILE, or a file removed at once where the
// filesystem lacks it), so nothing is left behind when the clone is
// closed or the process dies, even by SIGKILL. It holds no map on disk
// and its Sync does nothing: nothing of it outlives the process.
func NewTempClone(dir string, base *CloneBase, blockSize int) (*Clone, error) {
	h, err := newHeader(base, blockSize)
	if err != nil {
		return nil, err
	}
	h.dataOff = 0 // no header, no map: the data from offset 0
	f, err := openUnnamed(dir)
	if err != nil {
		return nil, fmt.Errorf("throw-away overlay in %s: %w", dir, err)
	}
	if err := f.Truncate(h.blocks() << h.blockShift); err != nil {
		f.Close()
		return nil, fmt.Errorf("throw-away overlay in %s: %w", dir, err)
	}
	fb, err := NewFile(f, false)
	if err != nil {
		f.Close()
		return nil, err
	}
	c := newClone(base.b, fb, &h, false, true)
	c.cb = base
	return c, nil
}

// openUnnamed opens a new file in dir that has no name.
func openUnnamed(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(throw-away overlay)")), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, err
	}
	f, err := os.CreateTemp(dir, ".nbdd-overlay-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// IsOverlay reports whether the file at path starts as an nbdd overlay
// does. nbdd never probes an export's file with it: a raw image whose
// guest wrote the magic would otherwise be taken for an overlay.
func IsOverlay(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, len(overlayMagic))
	if _, err := io.ReadFull(f, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	return isOverlayHeader(b), nil
}

// OverlayInfo describes an overlay file at rest.
type OverlayInfo struct {
	Size      int64 // the export size, the base's
	BlockSize int64
	DataBytes int64 // bytes of the export the overlay holds
	ZeroBytes int64 // bytes it masks as zeroes
	// Base is the base's path as the header names it, resolved against
	// the overlay's directory when relative; BaseName is as written.
	Base, BaseName string
	BaseModTime    time.Time // zero when not recorded (a block device)
	// InUse is set when a writable Clone holds the overlay: the figures
	// are then a snapshot of its last FLUSH.
	InUse  bool
	header overlayHeader
}

// ReadOverlayInfo reads the header and map of the overlay at path,
// without locking it.
func ReadOverlayInfo(path string) (OverlayInfo, error) {
	f, err := openImage(path, true, 0)
	if err != nil {
		return OverlayInfo{}, err
	}
	info := OverlayInfo{InUse: lockOverlay(f, true) != nil}
	fb, err := NewFile(f, true) // owns f: closing it drops the lock
	if err != nil {
		f.Close()
		return OverlayInfo{}, err
	}
	defer fb.Close()
	h, err := readHeader(fb)
	if err != nil {
		return OverlayInfo{}, fmt.Errorf("overlay %s: %w", path, err)
	}
	c, err := loadOverlay(fb, nil, &h, true)
	if err != nil {
		return OverlayInfo{}, fmt.Errorf("overlay %s: %w", path, err)
	}
	info.header = h
	info.Size, info.BlockSize = h.size, 1<<h.blockShift
	info.DataBytes, info.ZeroBytes = c.Allocated()
	info.BaseName, info.Base = h.basePath, h.basePath
	if !filepath.IsAbs(h.basePath) {
		info.Base = filepath.Join(filepath.Dir(path), h.basePath)
	}
	if h.baseModTime != 0 {
		info.BaseModTime = time.Unix(0, h.baseModTime)
	}
	return info, nil
}

// CheckBase returns ErrBaseChanged, saying what differs, unless b is the
// base the overlay was made over.
func (o OverlayInfo) CheckBase(b *CloneBase) error { return b.check(&o.header) }
