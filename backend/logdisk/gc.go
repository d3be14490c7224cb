package logdisk

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// gcInterval is how often the writer looks for garbage.
const gcInterval = 10 * time.Second

func (d *Disk) gcLoop() {
	defer d.wg.Done()
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		case <-d.gcKick:
		}
		if err := d.collect(false, d.cfg.gcGrace()); err != nil && d.ctx.Err() == nil {
			d.log.Warn("garbage collection", "image", d.prefix, "err", err)
		}
	}
}

// GC compacts every segment whose live share is below GCLiveRatio,
// writes a checkpoint and deletes the objects it no longer references
// that have been unreferenced for grace (0: at once).
func (d *Disk) GC(grace time.Duration) error {
	return d.collect(true, grace)
}

// gcIdle is how long the clients must have left the image alone (no
// WRITE, TRIM, WRITE_ZEROES or FLUSH) before an unforced compaction
// starts or goes on with its next segment.
const gcIdle = 2 * time.Second

// collect is one garbage collection pass. Unforced, it compacts only
// when a quarter of the stored data, and at least two segments' worth,
// is dead, and then only while the clients leave the image alone:
// compaction appends to the log that FLUSH waits for, so a FLUSH behind
// it would wait for the copies too. Once half the stored data is dead it
// compacts regardless, which bounds the bucket's bytes.
func (d *Disk) collect(force bool, grace time.Duration) error {
	cands, urgent := d.compactionCandidates(force)
	for _, c := range cands {
		if !force && !urgent && !d.idle() {
			break // the rest on a later pass
		}
		if err := d.compact(c.seg, c.maps); err != nil {
			return err
		}
	}
	d.mu.Lock()
	stale := d.ckpt.seq < d.nextSeq-1 && (force || len(cands) > 0)
	d.mu.Unlock()
	if stale {
		if err := d.Checkpoint(); err != nil {
			return err
		}
	}
	return d.sweep(grace)
}

type candidate struct {
	seg  *segment
	maps []mapping
}

// idle reports whether no client has written or flushed for gcIdle.
func (d *Disk) idle() bool {
	return time.Since(time.Unix(0, d.lastWrite.Load())) >= gcIdle
}

// compactionCandidates returns the segments to compact, and whether
// compaction is urgent (half the stored data is dead).
func (d *Disk) compactionCandidates(force bool) ([]candidate, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var live int64
	for _, s := range d.segs {
		live += s.live
	}
	dead := d.dataBytes - live
	urgent := dead >= d.dataBytes/2
	if !force && (dead < d.dataBytes/4 || dead < 2*d.cfg.segmentSize() || !urgent && !d.idle()) {
		return nil, false
	}
	ratio := d.cfg.gcLiveRatio()
	picked := map[uint64]*candidate{}
	for seq, s := range d.segs {
		if s.landed && s.jf == nil && s.live > 0 && float64(s.live) < ratio*float64(s.dataLen) {
			picked[seq] = &candidate{seg: s}
		}
	}
	if len(picked) == 0 {
		return nil, false
	}
	d.m.all(func(e mapping) {
		if c := picked[e.seg]; e.kind == kindData && c != nil {
			c.maps = append(c.maps, e)
		}
	})
	out := make([]candidate, 0, len(picked))
	for _, c := range picked {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seg.seq < out[j].seg.seq })
	return out, urgent
}

// compact copies the live extents of s to the open segment, each only
// if the map still points where it pointed when s was chosen.
func (d *Disk) compact(s *segment, maps []mapping) error {
	data := make([]byte, s.dataLen)
	if err := d.get(d.key(logDir, s.seq), data, s.hdrLen); err != nil {
		return fmt.Errorf("compact %d: %w", s.seq, err)
	}
	for _, m := range maps {
		src := data[m.dataOff : m.dataOff+m.len]
		if m.whole && crc32c(src) != m.crc {
			return fmt.Errorf("compact %d: %w", s.seq, corrupt("data CRC at %d", m.dataOff))
		}
		if err := d.copyIfUnchanged(s.seq, m, src); err != nil {
			return err
		}
	}
	return nil
}

func (d *Disk) copyIfUnchanged(seq uint64, m mapping, src []byte) error {
	d.appendMu.Lock()
	defer d.appendMu.Unlock()
	var still []mapping
	d.mu.Lock()
	d.m.each(m.off, m.end(), func(e mapping) bool {
		if e.kind == kindData && e.seg == seq && e.dataOff == m.dataOff+(e.off-m.off) {
			still = append(still, e)
		}
		return true
	})
	d.mu.Unlock()
	for _, e := range still {
		b := src[e.off-m.off : e.end()-m.off]
		if err := d.appendExtentHeld(kindData, e.off, e.len, b, crc32c(b)); err != nil {
			return err
		}
	}
	return nil
}

// sweep deletes the log objects at or below the latest checkpoint that it
// does not reference, and the older checkpoints, once they have been
// unreferenced for grace. Snapshots (snap/NAME, naming a checkpoint) pin
// that checkpoint and its segments.
func (d *Disk) sweep(grace time.Duration) error {
	d.mu.Lock()
	c, refs := d.ckpt.seq, d.ckpt.refs
	idle := c == d.sweptAt && len(d.doomed) == 0
	d.sweptAt = c
	d.mu.Unlock()
	if c == 0 || idle && grace != 0 {
		return nil // nothing can have become garbage since the last sweep
	}
	pinned, pinnedCkpts, err := d.pinned()
	if err != nil {
		return err
	}
	var unref []string
	err = d.store.List(d.ctx, d.prefix+logDir, "", func(o ObjectInfo) bool {
		seq, ok := parseSeqKey(d.prefix, logDir, o.Key)
		if ok && seq <= c && !refs[seq] && !pinned[seq] {
			unref = append(unref, o.Key)
		}
		return ok && seq <= c || !ok
	})
	if err != nil {
		return err
	}
	err = d.store.List(d.ctx, d.prefix+ckptDir, "", func(o ObjectInfo) bool {
		seq, ok := parseSeqKey(d.prefix, ckptDir, o.Key)
		if ok && seq < c && !pinnedCkpts[seq] {
			unref = append(unref, o.Key)
		}
		return true
	})
	if err != nil {
		return err
	}
	return d.deleteAfterGrace(unref, grace)
}

// deleteAfterGrace deletes the keys that have been seen unreferenced for
// at least grace.
func (d *Disk) deleteAfterGrace(keys []string, grace time.Duration) error {
	now := time.Now()
	var due []string
	d.mu.Lock()
	if d.doomed == nil {
		d.doomed = map[string]time.Time{}
	}
	for _, k := range keys {
		first, ok := d.doomed[k]
		if !ok {
			d.doomed[k], first = now, now
		}
		if now.Sub(first) >= grace {
			due = append(due, k)
			delete(d.doomed, k)
		}
	}
	d.mu.Unlock()
	due, err := d.unpinned(due)
	if err != nil {
		return err
	}
	for len(due) > 0 {
		n := min(len(due), 1000)
		if err := d.store.Delete(d.ctx, due[:n]); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		for _, k := range due[:n] {
			if seq, ok := parseSeqKey(d.prefix, logDir, k); ok {
				d.cache.drop(seq)
			}
		}
		due = due[n:]
	}
	return nil
}

// snapshotObject is the body of snap/NAME: the checkpoint a sealed
// snapshot pins. Garbage collection keeps it and every segment it
// references for as long as the snapshot exists.
type snapshotObject struct {
	Checkpoint uint64    `json:"checkpoint"`
	Created    time.Time `json:"created,omitzero"`
}

// pinned returns the segments and checkpoints that snapshots pin.
func (d *Disk) pinned() (segs, ckpts map[uint64]bool, err error) {
	segs, ckpts = map[uint64]bool{}, map[uint64]bool{}
	var keys []ObjectInfo
	err = d.store.List(d.ctx, d.prefix+snapDir, "", func(o ObjectInfo) bool {
		keys = append(keys, o)
		return true
	})
	if err != nil {
		return nil, nil, err
	}
	for _, o := range keys {
		so, err := readSnapshot(d.ctx, d.store, d.prefix, strings.TrimPrefix(o.Key, d.prefix+snapDir))
		if errors.Is(err, ErrNoSnapshot) {
			continue // removed since the list
		}
		if err != nil {
			return nil, nil, err
		}
		ck, err := d.readCheckpoint(d.ctx, ObjectInfo{Key: d.key(ckptDir, so.Checkpoint), Size: -1})
		if err != nil {
			return nil, nil, err
		}
		ckpts[so.Checkpoint] = true
		for _, r := range ck.Segs {
			segs[r.Seq] = true
		}
	}
	return segs, ckpts, nil
}
