package logdisk

import (
	"context"
)

// Close makes every write durable, writes a checkpoint and a close
// object, so the next writer needs no takeover, and stops. If the store
// cannot take the data within FlushTimeout, Close gives up and returns the
// error: the journal keeps the writes, and the next Open with the same
// journal directory replays them.
func (d *Disk) Close() error {
	if d.cfg.ReadOnly {
		d.abandon()
		return nil
	}
	d.appendMu.Lock()
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		d.appendMu.Unlock()
		return nil
	}
	d.sealLocked()
	d.closing = true
	target, failed := d.nextSeq-1, d.failed
	d.room.Broadcast()
	d.mu.Unlock()
	d.appendMu.Unlock()
	if failed != nil {
		d.abandon()
		return failed
	}
	err := d.waitDurable(target, d.cfg.flushTimeout())
	if err == nil {
		err = d.writeClose()
	}
	d.abandon()
	return err
}

// writeClose writes the close object and a checkpoint of the closed image.
func (d *Disk) writeClose() error {
	d.mu.Lock()
	seq := d.nextSeq
	d.nextSeq++
	c := d.snapshotLocked(seq, true)
	d.mu.Unlock()
	h := logHeader{Kind: objClose, Seq: seq, Epoch: d.epoch}
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.flushTimeout())
	defer cancel()
	if err := d.putSmall(ctx, d.key(logDir, seq), h.appendBinary(nil), seq); err != nil {
		return err
	}
	d.mu.Lock()
	d.durable = seq
	d.mu.Unlock()
	return d.putCheckpoint(ctx, c)
}

// abandon stops the workers and releases the journal, leaving whatever
// it holds for the next Open.
func (d *Disk) abandon() {
	d.cancel()
	d.mu.Lock()
	d.closing = true
	d.room.Broadcast()
	d.mu.Unlock()
	d.wg.Wait()
	d.startClaims(false)
	d.opening.Wait()
	d.releaseBase()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	d.cache.close()
	for _, s := range d.segs {
		if s.jf != nil {
			s.jf.f.Close()
			s.jf = nil
		}
	}
	for _, jf := range d.freeJournals {
		jf.remove() // their segments are durable
	}
	d.freeJournals = nil
	if d.journalLock != nil {
		d.journalLock.Close()
		d.journalLock = nil
	}
}

// Info describes an image.
type Info struct {
	Size        int64  // export size
	LiveBytes   int64  // bytes of data the map references
	StoredBytes int64  // data bytes of the segments it references
	Segments    int    // segments the map references
	Extents     int    // map entries
	Epoch       Epoch  // the last writer's (this one's, if writing)
	Checkpoint  uint64 // the latest checkpoint's sequence number
	LastSeq     uint64 // the highest log sequence number
	Held        bool   // a writer holds the image (or died without closing)
}

// Info returns facts about the image.
func (d *Disk) Info() Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	in := Info{Size: d.meta.Size, Extents: d.m.n, Epoch: d.epoch, Checkpoint: d.ckpt.seq, LastSeq: d.nextSeq - 1}
	for _, s := range d.segs {
		if s.live > 0 {
			in.Segments++
			in.LiveBytes += s.live
			in.StoredBytes += s.dataLen
		}
	}
	in.Held = !d.cfg.ReadOnly && !d.closing || d.cfg.ReadOnly && !d.lastTail.closed
	return in
}
