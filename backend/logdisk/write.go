package logdisk

import (
	"fmt"
	"time"

	"github.com/nbdd/nbdd/backend"
)

// WriteAt implements io.WriterAt: the data goes to the journal and the
// map, and is acknowledged before it reaches the store (write-back);
// FLUSH or FUA make it durable.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	crc := crc32c(p)
	if err := d.appendExtent(kindData, off, int64(len(p)), p, crc); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFUA implements backend.FUAWriter: the write, then a FLUSH (the
// log makes a write durable only with everything before it).
func (d *Disk) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := d.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Sync()
}

// Trim implements backend.Trimmer: the range becomes a hole, which reads
// as zeroes (and masks a base image).
func (d *Disk) Trim(off, length int64) error {
	if err := d.checkRange(off, length); err != nil || length == 0 {
		return err
	}
	return d.appendExtent(kindHole, off, length, nil, 0)
}

// WriteZeroes implements backend.Zeroer: a map entry, no data, fast
// always.
func (d *Disk) WriteZeroes(off, length int64, noHole, fast bool) error {
	if err := d.checkRange(off, length); err != nil || length == 0 {
		return err
	}
	kind := kindHole
	if noHole {
		kind = kindZero
	}
	return d.appendExtent(kind, off, length, nil, 0)
}

// appendExtent appends one record to the open segment and maps it.
func (d *Disk) appendExtent(kind extKind, off, n int64, data []byte, crc uint32) error {
	d.lastWrite.Store(time.Now().UnixNano())
	d.appendMu.Lock()
	defer d.appendMu.Unlock()
	return d.appendExtentHeld(kind, off, n, data, crc)
}

// appendExtentHeld is appendExtent with appendMu held by the caller.
func (d *Disk) appendExtentHeld(kind extKind, off, n int64, data []byte, crc uint32) error {
	d.mu.Lock()
	seg, err := d.openForAppendLocked(int64(len(data)))
	d.mu.Unlock()
	if err != nil {
		return err
	}
	dataOff, err := seg.jf.appendRecord(uint8(kind), off, n, data, crc)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.failLocked(fmt.Errorf("journal: %w", err))
		return err
	}
	d.dirty += recordHeaderSize + int64(len(data))
	e := logExtent{Off: off, Len: n, Kind: kind, CRC: crc}
	if kind == kindData {
		e.DataOff = dataOff
	}
	seg.extents = append(seg.extents, e)
	d.mapExtentLocked(seg.seq, e)
	if seg.jf.size >= d.cfg.segmentSize() {
		d.sealLocked()
	}
	return nil
}

// openForAppendLocked waits for room under the dirty limit and returns
// the open segment, starting one if need be. The caller holds appendMu.
func (d *Disk) openForAppendLocked(n int64) (*segment, error) {
	for {
		if err := d.usableLocked(); err != nil {
			return nil, err
		}
		if d.writerFile != nil {
			if err := d.awaitWriterFileLocked(); err != nil {
				return nil, err
			}
			continue // d.mu was released
		}
		if d.dirty == 0 || d.dirty+n <= d.cfg.dirtyLimit() {
			break
		}
		if d.openSeg != nil {
			d.sealLocked() // so the uploads that make room can start
		}
		d.room.Wait()
	}
	if d.openSeg != nil {
		return d.openSeg, nil
	}
	d.startClaims(true) // the segment's upload waits for them
	seq := d.nextSeq
	jf, err := d.journalLocked(journalHeader{ID: d.meta.ID, Epoch: d.epoch, Local: seq})
	if err != nil {
		d.failLocked(fmt.Errorf("journal: %w", err))
		return nil, err
	}
	d.nextSeq++
	d.dirty += journalHeaderSize
	d.openSeg = &segment{seq: seq, jf: jf}
	d.segs[seq] = d.openSeg
	return d.openSeg, nil
}

// awaitWriterFileLocked waits, with d.mu released, until the journal
// directory's writer file names this writer's epoch: no journal file of
// the epoch exists before, so a restart after a crash always finds its
// journal resumable. The caller holds appendMu, so it waits alone.
func (d *Disk) awaitWriterFileLocked() error {
	f := d.writerFile
	d.mu.Unlock()
	_, err := f.wait()
	d.mu.Lock()
	d.writerFile = nil
	if err != nil {
		d.failLocked(fmt.Errorf("journal: %w", err))
		return err
	}
	return nil
}

// journalLocked returns the journal file of a new segment: a free one
// rewritten for it, else a new file.
func (d *Disk) journalLocked(hdr journalHeader) (*journalFile, error) {
	if n := len(d.freeJournals); n > 0 {
		jf := d.freeJournals[n-1]
		d.freeJournals = d.freeJournals[:n-1]
		if err := jf.reuse(hdr); err != nil {
			jf.remove()
			return nil, err
		}
		return jf, nil
	}
	return createJournal(d.cfg.JournalDir, hdr)
}

func (d *Disk) usableLocked() error {
	switch {
	case d.failed != nil:
		return d.failed
	case d.closing:
		return ErrClosed
	case d.cfg.ReadOnly:
		return backend.ErrReadOnly
	}
	return nil
}

// mapExtentLocked points the map at extent e of segment seq and keeps the
// live-byte counts.
func (d *Disk) mapExtentLocked(seq uint64, e logExtent) {
	m := mapping{off: e.Off, len: e.Len, kind: e.Kind}
	if e.Kind == kindData {
		m.seg, m.dataOff, m.crc, m.whole = seq, e.DataOff, e.CRC, true
		if s := d.segs[seq]; s != nil {
			s.live += e.Len
		}
	}
	d.m.set(m, d.unmapLocked)
}

func (d *Disk) unmapLocked(old mapping) {
	if s := d.segs[old.seq()]; s != nil {
		s.live -= old.len
	}
}

func (m mapping) seq() uint64 { return m.seg }

// sealLocked closes the open segment to writes and queues its upload.
func (d *Disk) sealLocked() {
	s := d.openSeg
	if s == nil {
		return
	}
	d.openSeg = nil
	if _, err := s.jf.appendRecord(recSeal, int64(s.seq), 0, nil, 0); err != nil {
		d.failLocked(fmt.Errorf("journal: %w", err))
		return
	}
	d.dirty += recordHeaderSize
	h := logHeader{Kind: objSegment, Seq: s.seq, Epoch: d.epoch, DataLen: s.jf.size, Extents: s.extents}
	s.hdr = h.appendBinary(nil)
	s.hdrLen, s.dataLen = int64(len(s.hdr)), s.jf.size
	s.extents = nil
	d.dataBytes += s.dataLen
	d.queue = append(d.queue, s)
	d.room.Broadcast() // an upload worker may take it
	d.ckpt.sealed(d, s.seq)
}

// Sync implements backend.Backend (NBD_CMD_FLUSH): it returns once every
// write completed before it is in the store, or fails after FlushTimeout.
// Concurrent FLUSHes share uploads (group commit): while every upload
// slot is busy, the open segment keeps filling and is sealed for all of
// them when a slot frees.
func (d *Disk) Sync() error {
	if d.cfg.ReadOnly {
		return nil
	}
	d.lastWrite.Store(time.Now().UnixNano())
	d.appendMu.Lock()
	d.mu.Lock()
	target := d.nextSeq - 1
	if d.openSeg != nil && d.inFlight+len(d.queue) >= d.cfg.uploads() {
		d.pending = true
	} else {
		d.sealLocked()
	}
	d.mu.Unlock()
	d.appendMu.Unlock()
	return d.waitDurable(target, d.cfg.flushTimeout())
}

// waitDurable waits until every log object up to target is in the store.
func (d *Disk) waitDurable(target uint64, timeout time.Duration) error {
	d.startClaims(true) // durable reaches past the first claim only once they are decided
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		d.mu.Lock()
		durable, failed, ch := d.durable, d.failed, d.progress
		d.mu.Unlock()
		switch {
		case failed != nil:
			return failed
		case durable >= target:
			return nil
		}
		select {
		case <-ch:
		case <-timer.C:
			d.log.Error("FLUSH failed: the store did not take the data in time; uploads go on",
				"image", d.prefix, "timeout", timeout, "durable", durable, "want", target)
			return ErrFlushTimeout
		}
	}
}

// sealPending seals the open segment for FLUSHes that found every upload
// slot busy, once one frees.
func (d *Disk) sealPending() {
	d.appendMu.Lock()
	defer d.appendMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending && d.inFlight+len(d.queue) < d.cfg.uploads() {
		d.pending = false
		d.sealLocked()
	}
}
