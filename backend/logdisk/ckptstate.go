package logdisk

import (
	"context"
	"fmt"
)

// ckptState tracks the writer's checkpoints. Guarded by Disk.mu.
type ckptState struct {
	seq     uint64          // the latest checkpoint in the store (0: none)
	refs    map[uint64]bool // the segments it references
	since   int             // segments sealed since the last snapshot
	pending *checkpoint     // a snapshot waiting for its log objects to land
	writing bool
	written int // checkpoints written by this Disk
}

// sealed counts a sealed segment and snapshots the map every
// CheckpointEvery segments. Right after a seal the map holds exactly the
// log objects up to seq.
func (c *ckptState) sealed(d *Disk, seq uint64) {
	c.since++
	if c.since >= d.cfg.ckptEvery() && c.pending == nil && !c.writing {
		c.pending = d.snapshotLocked(seq, false)
		c.since = 0
	}
}

// durableAdvanced starts writing the pending snapshot once every log
// object it covers is in the store.
func (c *ckptState) durableAdvanced(d *Disk) {
	if c.pending == nil || c.writing || d.durable < c.pending.Seq {
		return
	}
	ck := c.pending
	c.pending, c.writing = nil, true
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := d.putCheckpoint(d.ctx, ck)
		d.mu.Lock()
		defer d.mu.Unlock()
		c.writing = false
		if err != nil && d.ctx.Err() == nil {
			d.log.Warn("checkpoint not written; the next one will cover it", "image", d.prefix, "seq", ck.Seq, "err", err)
		}
	}()
}

// snapshotLocked copies the map as a checkpoint after log object seq.
// The caller has just sealed (or nothing is open), so the map holds
// exactly the log objects up to seq.
func (d *Disk) snapshotLocked(seq uint64, closed bool) *checkpoint {
	c := &checkpoint{Seq: seq, Epoch: d.epoch, Closed: closed, Size: d.meta.Size}
	c.Extents = make([]mapping, 0, d.m.n)
	used := map[uint64]bool{}
	d.m.all(func(e mapping) {
		c.Extents = append(c.Extents, e)
		if e.kind == kindData {
			used[e.seg] = true
		}
	})
	for seq := range used {
		s := d.segs[seq]
		c.Segs = append(c.Segs, segRef{Seq: seq, HdrLen: s.hdrLen, DataLen: s.dataLen})
	}
	sortSegRefs(c.Segs)
	return c
}

// putCheckpoint writes c and makes it the latest.
func (d *Disk) putCheckpoint(ctx context.Context, c *checkpoint) error {
	d.mu.Lock()
	stale := c.Seq <= d.ckpt.seq && d.ckpt.seq != 0
	d.mu.Unlock()
	if stale {
		return nil
	}
	b := c.appendBinary(make([]byte, 0, c.encodedSize()))
	if err := d.putSmall(ctx, d.key(ckptDir, c.Seq), b, c.Seq); err != nil {
		return fmt.Errorf("checkpoint %d: %w", c.Seq, err)
	}
	refs := make(map[uint64]bool, len(c.Segs))
	for _, s := range c.Segs {
		refs[s.Seq] = true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c.Seq > d.ckpt.seq {
		d.ckpt.seq, d.ckpt.refs = c.Seq, refs
		d.ckpt.written++
		d.forgetDeadLocked(c.Seq)
	}
	return nil
}

// forgetDeadLocked drops the segments at or below a checkpoint that the
// map no longer references: the sweep deletes their objects.
func (d *Disk) forgetDeadLocked(ckptSeq uint64) {
	for seq, s := range d.segs {
		if seq <= ckptSeq && s.live == 0 && s.landed && s.jf == nil {
			delete(d.segs, seq)
			d.dataBytes -= s.dataLen
		}
	}
}

// Checkpoint seals what is open, waits for it to reach the store, and
// writes a checkpoint of the whole map.
func (d *Disk) Checkpoint() error {
	d.appendMu.Lock()
	d.mu.Lock()
	if err := d.usableLocked(); err != nil {
		d.mu.Unlock()
		d.appendMu.Unlock()
		return err
	}
	d.sealLocked()
	c := d.snapshotLocked(d.nextSeq-1, false)
	d.mu.Unlock()
	d.appendMu.Unlock()
	if err := d.waitDurable(c.Seq, d.cfg.flushTimeout()); err != nil {
		return err
	}
	return d.putCheckpoint(d.ctx, c)
}
