//go:build linux

package backend

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// overlayStore is the storage a Clone keeps its header, map and data in:
// a File on the overlay file, or in tests a simulated disk that can
// crash. Punching (Trim) only frees space: the map, not the data,
// decides what a block reads as.
type overlayStore interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Trimmer
	Zeroer
	FUAWriter
	Close() error
}

// copyStripes is how many locks serialize copy-ups; block i takes lock
// i%copyStripes.
const copyStripes = 256

// Clone is a copy-on-write export over a read-only base (a CloneBase):
// blocks it never wrote read from the base, the others from its overlay
// file, which holds its own allocation map (docs/clones.md). Writes never
// reach the base.
//
// Each block is in one of three states: from the base, data in the
// overlay, or zero (TRIM and WRITE_ZEROES mask the base). A write that
// covers a whole block goes to the overlay and then marks the block; a
// write to part of a block from the base first copies the rest of the
// block up, under a lock per block, so that two writes to different
// parts of one block do not undo each other. Reads look the states up
// without a lock: a block changes state only after its data is in the
// overlay.
//
// Sync (FLUSH) writes the data with fdatasync before the map pages that
// point at it, each into the slot that does not hold its current copy,
// then fdatasyncs again: a crash at any moment leaves a map whose every
// block points at data that was written (docs/clones.md, "Crash rules").
// A throw-away clone (NewTempClone) persists nothing and its Sync does
// nothing.
//
// Clone implements Trimmer, FastZeroer, Extenter (the union of overlay
// and base), Cacher, FUAWriter, MultiConner, ReadOnlyer, and, where its
// files allow, NonBlocker, CachedReader and PipeWriter. Serve Export(),
// which adds Viewer when the base and the overlay are in memory.
type Clone struct {
	cb       *CloneBase   // nil in tests that give a Backend alone
	unmap    func() error // undoes Export's mapping of the overlay
	base     Backend
	ov       overlayStore
	size     int64
	shift    uint
	nblocks  int64
	dataOff  int64
	readOnly bool
	temp     bool

	states  stateMap
	copyMu  [copyStripes]sync.Mutex
	dirty   bitmap // map pages changed since they were last written
	durable bitmap // blocks the map on disk already has as data (WriteAtFUA)
	bufs    sync.Pool

	syncMu sync.Mutex
	slots  []slotRef // per map page; guarded by syncMu

	// writes counts copy-ups and full-block writes, for tests.
	copyUps atomic.Int64
}

// slotRef is where a map page's current copy is: slot 0 or 1, or -1
// before its first write.
type slotRef struct {
	cur int8
	gen uint64
}

// newClone returns a clone of base over ov, laid out as h says.
func newClone(base Backend, ov overlayStore, h *overlayHeader, readOnly, temp bool) *Clone {
	n := h.blocks()
	c := &Clone{
		base: base, ov: ov, size: h.size, shift: h.blockShift, nblocks: n, dataOff: h.dataOff,
		readOnly: readOnly, temp: temp,
		states: newStateMap(n),
	}
	if !temp {
		c.dirty = newBitmap(mapPages(n))
		c.durable = newBitmap(mapPages(n) * pageBlocks)
		c.slots = make([]slotRef, mapPages(n))
		for i := range c.slots {
			c.slots[i].cur = -1
		}
	}
	bs := 1 << h.blockShift
	c.bufs.New = func() any { b := make([]byte, bs); return &b }
	return c
}

// Size returns the export size, the base's.
func (c *Clone) Size() (int64, error) { return c.size, nil }

// ReadOnly reports whether writes are refused.
func (c *Clone) ReadOnly() bool { return c.readOnly }

// CanMultiConn reports true: every connection shares one map and one
// overlay, so a FLUSH on one covers writes completed on another.
func (c *Clone) CanMultiConn() bool { return true }

// CanFastZero reports true: zeroing whole blocks changes their state;
// only the partial blocks at a range's edges are written.
func (c *Clone) CanFastZero() bool { return true }

// blockStart and blockEnd bound block i in the export.
func (c *Clone) blockStart(i int64) int64 { return i << c.shift }
func (c *Clone) blockEnd(i int64) int64   { return min((i+1)<<c.shift, c.size) }

// runOf returns the state of block lo and the end of the run of blocks
// in that state from it, at most hi.
func (c *Clone) runOf(lo, hi int64) (blockState, int64) {
	s := c.states.get(lo)
	return s, c.states.runEnd(lo, hi, s)
}

// ReadAt reads blocks from the base, from the overlay or as zeroes, as
// their states say. A read running past the end is cut short with an
// error matching both ErrOutOfRange and io.EOF.
func (c *Clone) ReadAt(p []byte, off int64) (int, error) {
	n, rerr := readLimit(len(p), off, c.size)
	if n == 0 {
		return 0, rerr
	}
	if err := c.read(p[:n], off); err != nil {
		return 0, err
	}
	return n, rerr
}

// read fills p from off, which lie inside the export.
func (c *Clone) read(p []byte, off int64) error {
	return c.eachRun(off, off+int64(len(p)), func(s blockState, pos, stop int64) error {
		seg := p[pos-off : stop-off]
		var err error
		switch s {
		case stateBase:
			err = readFullAt(c.base, seg, pos)
		case stateData:
			err = readFullAt(c.ov, seg, c.dataOff+pos)
		default:
			clear(seg)
		}
		if err != nil {
			return fmt.Errorf("clone read at %d: %w", pos, err)
		}
		return nil
	})
}

// eachRun calls fn for each run of blocks in one state that [off, end)
// touches, cut to the range, in order, until fn returns an error, which
// it returns.
func (c *Clone) eachRun(off, end int64, fn func(s blockState, pos, stop int64) error) error {
	last := (end - 1) >> c.shift
	for pos := off; pos < end; {
		s, run := c.runOf(pos>>c.shift, last+1)
		stop := min(run<<c.shift, end)
		if err := fn(s, pos, stop); err != nil {
			return err
		}
		pos = stop
	}
	return nil
}

// errStopRuns ends an eachRun walk early without an error to report.
var errStopRuns = errors.New("stop")

// readFullAt reads all of p at off; io.EOF with a full count is success.
func readFullAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("%d of %d bytes: %w", n, len(p), io.ErrUnexpectedEOF)
	}
	return err
}

// checkWrite is the range and permission check of every write.
func (c *Clone) checkWrite(op string, off, length int64) error {
	if c.readOnly {
		return fmt.Errorf("%s: %w", op, ErrReadOnly)
	}
	return checkRange(op, off, length, c.size)
}

// WriteAt writes p into the overlay, copying up the rest of a partly
// written block from the base first. A write running past the end writes
// nothing and returns ErrOutOfRange.
func (c *Clone) WriteAt(p []byte, off int64) (int, error) {
	if err := c.checkWrite("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := c.write(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// write writes p at off, which lie inside the export: the partial blocks
// at either edge through the copy-up path, the whole blocks between them
// with one write.
func (c *Clone) write(p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	end := off + int64(len(p))
	first, last := off>>c.shift, (end-1)>>c.shift
	lo, hi := first, last+1 // the whole blocks: [lo, hi)
	if off > c.blockStart(first) || end < c.blockEnd(first) {
		lo++
		if err := c.writePartial(first, p[:min(end, c.blockEnd(first))-off], off); err != nil {
			return err
		}
	}
	if last > first && end < c.blockEnd(last) {
		hi--
		if err := c.writePartial(last, p[c.blockStart(last)-off:], c.blockStart(last)); err != nil {
			return err
		}
	}
	if lo < hi {
		start := c.blockStart(lo)
		return c.writeWhole(lo, hi, p[start-off:c.blockEnd(hi-1)-off], start)
	}
	return nil
}

// writeWhole writes blocks [lo, hi), whose bytes p are, into the overlay
// and then marks them as data.
func (c *Clone) writeWhole(lo, hi int64, p []byte, pos int64) error {
	if _, err := c.ov.WriteAt(p, c.dataOff+pos); err != nil {
		return fmt.Errorf("clone write at %d: %w", pos, err)
	}
	c.publish(lo, hi)
	return nil
}

// publish marks blocks [lo, hi), whose data is in the overlay, as data:
// the state first, then the map page dirty, so that a Sync that clears
// the page's dirty bit has seen the new state.
func (c *Clone) publish(lo, hi int64) {
	if c.states.all(lo, hi, stateData) {
		return
	}
	c.states.set(lo, hi, stateData)
	c.markDirty(lo, hi)
}

// markDirty records that the map pages of blocks [lo, hi) changed.
func (c *Clone) markDirty(lo, hi int64) {
	if !c.temp {
		c.dirty.set(lo/pageBlocks, (hi-1)/pageBlocks+1)
	}
}

// writePartial writes seg at pos, inside block i but not all of it. A
// block already in the overlay is written in place; otherwise, under the
// block's copy lock, the whole block is assembled from the base (or
// zeroes) and seg, written, and marked as data.
func (c *Clone) writePartial(i int64, seg []byte, pos int64) error {
	if c.states.get(i) == stateData {
		return c.writeInPlace(seg, pos)
	}
	mu := &c.copyMu[i%copyStripes]
	mu.Lock()
	defer mu.Unlock()
	s := c.states.get(i)
	if s == stateData { // copied up by another write meanwhile
		return c.writeInPlace(seg, pos)
	}
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	start := c.blockStart(i)
	blk := (*bp)[:c.blockEnd(i)-start]
	if s == stateBase {
		if err := readFullAt(c.base, blk, start); err != nil {
			return fmt.Errorf("clone copy-up of block %d from the base: %w", i, err)
		}
	} else {
		clear(blk)
	}
	copy(blk[pos-start:], seg)
	c.copyUps.Add(1)
	return c.writeWhole(i, i+1, blk, start)
}

// writeInPlace writes seg at pos into a block already in the overlay.
func (c *Clone) writeInPlace(seg []byte, pos int64) error {
	if _, err := c.ov.WriteAt(seg, c.dataOff+pos); err != nil {
		return fmt.Errorf("clone write at %d: %w", pos, err)
	}
	return nil
}

// WriteAtFUA writes p and makes it durable. When every block it touches
// is data in the map on disk already, only the data must reach the disk
// (pwritev2 RWF_DSYNC on the overlay); otherwise the map must follow, and
// the write is followed by a Sync.
func (c *Clone) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := c.checkWrite("write", off, int64(len(p))); err != nil || len(p) == 0 {
		return 0, err
	}
	if c.temp {
		return c.WriteAt(p, off)
	}
	lo, hi := off>>c.shift, (off+int64(len(p))-1)>>c.shift+1
	if c.states.all(lo, hi, stateData) && c.durable.all(lo, hi) {
		n, err := c.ov.WriteAtFUA(p, c.dataOff+off)
		if err != nil {
			return n, fmt.Errorf("clone write at %d: %w", off, err)
		}
		return n, nil
	}
	if err := c.write(p, off); err != nil {
		return 0, err
	}
	return len(p), c.Sync()
}

// wholeBlocks returns the blocks [lo, hi) that [off, off+length) covers
// entirely, counting the short last block when the range ends at the
// export's end.
func (c *Clone) wholeBlocks(off, length int64) (lo, hi int64) {
	end := off + length
	lo, hi = (off+1<<c.shift-1)>>c.shift, end>>c.shift
	if end == c.size {
		hi = c.nblocks
	}
	return lo, max(lo, hi)
}

// Trim masks the whole blocks of [off, off+length): they read as zeroes
// from now on, whatever the base holds, and their space in the overlay
// is freed. The partial blocks at the edges keep their data, as TRIM
// allows (proto.md "NBD_CMD_TRIM": a hint).
func (c *Clone) Trim(off, length int64) error {
	if err := c.checkWrite("trim", off, length); err != nil || length == 0 {
		return err
	}
	lo, hi := c.wholeBlocks(off, length)
	return c.mask(lo, hi)
}

// mask puts blocks [lo, hi) in stateZero and punches their data out of
// the overlay.
func (c *Clone) mask(lo, hi int64) error {
	if lo >= hi {
		return nil
	}
	return c.setZero(lo, hi, true)
}

// setZero puts blocks [lo, hi) in stateZero, then, if punch is set,
// punches their data out of the overlay. A crash before the next Sync
// may leave the map on disk saying data over a punched block: it reads
// zeroes, as the TRIM or WRITE_ZEROES meant.
func (c *Clone) setZero(lo, hi int64, punch bool) error {
	if !c.states.all(lo, hi, stateZero) {
		c.states.set(lo, hi, stateZero)
		c.markDirty(lo, hi)
	}
	if !punch {
		return nil
	}
	start := c.blockStart(lo)
	if err := c.ov.Trim(c.dataOff+start, (hi-lo)<<c.shift); err != nil {
		return fmt.Errorf("clone trim at %d: %w", start, err)
	}
	return nil
}

// WriteZeroes zeroes [off, off+length): whole blocks are masked as Trim
// masks them; the partial blocks at the edges are written with zeroes
// (those already zero are left alone). With noHole, the masked blocks'
// space in the overlay is zeroed and kept instead of punched, so a later
// write to them cannot run out of space (proto.md "NBD_CMD_FLAG_NO_HOLE");
// they are still reported as holes that read as zeroes, as qemu reports
// the zero clusters of a qcow2 overlay. fast is honoured by the overlay's
// own zeroing when noHole is set; masking is always fast.
func (c *Clone) WriteZeroes(off, length int64, noHole, fast bool) error {
	if err := c.checkWrite("write zeroes", off, length); err != nil || length == 0 {
		return err
	}
	end := off + length
	lo, hi := c.wholeBlocks(off, length)
	if lo >= hi { // no whole block: zero the range as a write
		return c.zeroPartial(off, end)
	}
	if noHole {
		start := c.blockStart(lo)
		if err := c.ov.WriteZeroes(c.dataOff+start, (hi-lo)<<c.shift, true, fast); err != nil {
			return fmt.Errorf("clone write zeroes at %d: %w", start, err)
		}
	}
	if err := c.zeroPartial(off, c.blockStart(lo)); err != nil {
		return err
	}
	if err := c.zeroPartial(min(c.blockStart(hi), end), end); err != nil {
		return err
	}
	c.setZero(lo, hi, !noHole)
	return nil
}

// zeroPartial writes zeroes over [off, end), which covers no whole block,
// skipping blocks that already read as zeroes.
func (c *Clone) zeroPartial(off, end int64) error {
	for pos := off; pos < end; {
		i := pos >> c.shift
		stop := min(end, c.blockEnd(i))
		if c.states.get(i) != stateZero {
			if err := c.write(zeroBuf[:stop-pos], pos); err != nil {
				return err
			}
		}
		pos = stop
	}
	return nil
}

// Extents reports the union of overlay and base: blocks with data in the
// overlay are data, masked blocks ExtentHole|ExtentZero, and blocks from
// the base whatever the base reports for them (data, if it cannot tell).
func (c *Clone) Extents(off, length int64, fn func(Extent) bool) error {
	if err := checkRange("extents", off, length, c.size); err != nil || length == 0 {
		return err
	}
	mr := extentMerger{fn: fn}
	err := c.eachRun(off, off+length, func(s blockState, pos, stop int64) error {
		switch s {
		case stateData:
			mr.add(pos, stop-pos, 0)
		case stateZero:
			mr.add(pos, stop-pos, ExtentHole|ExtentZero)
		default:
			if err := c.baseExtents(&mr, pos, stop); err != nil {
				return err
			}
		}
		if mr.stopped {
			return errStopRuns
		}
		return nil
	})
	if err != nil && err != errStopRuns {
		return err
	}
	mr.flush()
	return nil
}

// baseExtents adds the base's extents of [pos, stop) to mr.
func (c *Clone) baseExtents(mr *extentMerger, pos, stop int64) error {
	e, ok := c.base.(Extenter)
	if !ok {
		mr.add(pos, stop-pos, 0)
		return nil
	}
	next := pos
	err := e.Extents(pos, stop-pos, func(x Extent) bool {
		lo, hi := max(x.Offset, next), min(x.Offset+x.Length, stop)
		if hi > lo {
			next = hi
			return mr.add(lo, hi-lo, x.Flags&(ExtentHole|ExtentZero)) && hi < stop
		}
		return hi < stop
	})
	if err != nil {
		return fmt.Errorf("clone extents of the base at %d: %w", pos, err)
	}
	if next < stop { // a base that stopped short: the rest is data
		mr.add(next, stop-next, 0)
	}
	return nil
}

// Cache asks the base and the overlay to read ahead the parts of
// [off, off+length) each holds.
func (c *Clone) Cache(off, length int64) error {
	if err := checkRange("cache", off, length, c.size); err != nil || length == 0 {
		return err
	}
	return c.eachRun(off, off+length, func(s blockState, pos, stop int64) error {
		switch s {
		case stateBase:
			if cb, ok := c.base.(Cacher); ok {
				return cb.Cache(pos, stop-pos)
			}
		case stateData:
			if cb, ok := c.ov.(Cacher); ok {
				return cb.Cache(c.dataOff+pos, stop-pos)
			}
		}
		return nil
	})
}

// Sync makes every completed write durable (NBD_CMD_FLUSH), in an order
// that keeps the overlay consistent across a crash at any point:
//
//  1. the map pages changed since the last Sync are copied as they are
//     now, and their dirty marks cleared;
//  2. fdatasync: every block those copies mark as data was written before
//     step 1 (a block is marked only after its write), so its data is now
//     on disk;
//  3. each page is written into its slot that does not hold the current
//     copy, with the next generation and a checksum;
//  4. fdatasync: the new copies count from now on.
//
// A failure leaves the pages dirty for the next Sync. A failed fdatasync
// fails every later Sync too (see File.Sync). A throw-away clone's Sync
// does nothing.
func (c *Clone) Sync() error {
	if c.temp {
		return nil
	}
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	pages := c.takeDirty()
	if err := c.ov.Sync(); err != nil {
		c.redirty(pages)
		return fmt.Errorf("clone flush: %w", err)
	}
	if len(pages) == 0 {
		return nil
	}
	for _, pg := range pages {
		ref := c.slots[pg.p]
		if _, err := c.ov.WriteAt(pg.slot, slotOffset(pg.p, 1-max(int(ref.cur), 0))); err != nil {
			c.redirty(pages)
			return fmt.Errorf("clone flush: write map page %d: %w", pg.p, err)
		}
	}
	if err := c.ov.Sync(); err != nil {
		c.redirty(pages)
		return fmt.Errorf("clone flush: %w", err)
	}
	for _, pg := range pages {
		ref := &c.slots[pg.p]
		ref.cur, ref.gen = int8(1-max(int(ref.cur), 0)), ref.gen+1
		c.markDurable(pg.p, pg.words)
	}
	return nil
}

// dirtyPage is a map page taken for writing by Sync: its words as they
// were, and the slot encoding them.
type dirtyPage struct {
	p     int64
	words []uint64
	slot  []byte
}

// takeDirty clears the dirty marks and copies and encodes every page
// that had one. The caller holds syncMu.
func (c *Clone) takeDirty() []dirtyPage {
	var pages []dirtyPage
	c.dirty.drain(int64(len(c.slots)), func(r blockRun) error {
		for p := r.lo; p < r.hi; p++ {
			pg := dirtyPage{p: p, words: make([]uint64, pageWords), slot: make([]byte, slotSize)}
			c.states.page(p, pg.words)
			encodeSlot(pg.slot, p, c.slots[p].gen+1, pg.words)
			pages = append(pages, pg)
		}
		return nil
	})
	return pages
}

// redirty marks pages dirty again after a failed Sync.
func (c *Clone) redirty(pages []dirtyPage) {
	for _, pg := range pages {
		c.dirty.set(pg.p, pg.p+1)
	}
}

// Close syncs a writable clone (a clean shutdown keeps every write) and
// closes its overlay, which releases its lock. The base stays open: it
// belongs to the CloneBase.
func (c *Clone) Close() error {
	var err error
	if !c.readOnly {
		err = c.Sync()
	}
	if c.unmap != nil {
		err = errors.Join(err, c.unmap())
		c.unmap = nil
	}
	return errors.Join(err, c.ov.Close())
}

// Allocated returns how many bytes of the export the overlay holds as
// data, and how many it masks as zero.
func (c *Clone) Allocated() (data, zero int64) {
	return c.bytesIn(stateData), c.bytesIn(stateZero)
}

// bytesIn returns how many bytes of the export are in blocks in state s.
func (c *Clone) bytesIn(s blockState) int64 {
	n := c.states.count(c.nblocks, s) << c.shift
	if c.nblocks > 0 && c.states.get(c.nblocks-1) == s {
		n -= c.nblocks<<c.shift - c.size // the short last block
	}
	return n
}
