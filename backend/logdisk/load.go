package logdisk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
)

// loadState is the log as found at open: the latest checkpoint and the
// headers of the log objects after it.
type loadState struct {
	ckpt *checkpoint // nil: no checkpoint yet
	base uint64      // the checkpoint's sequence number (0 without one)
	hdrs map[uint64]*logHeader
	max  uint64 // the highest sequence number seen
}

// loadLog reads the latest checkpoint and, at the same time, lists the
// log objects after it and reads their headers, in parallel: the
// checkpoint's key names its sequence number, so the log's listing need
// not wait for its body.
func (d *Disk) loadLog(ctx context.Context) (*loadState, error) {
	latest, err := d.latestCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	st := &loadState{hdrs: map[uint64]*logHeader{}}
	ckptDone := make(chan error, 1)
	if latest.Key == "" {
		ckptDone <- nil
	} else {
		st.base, _ = parseSeqKey(d.prefix, ckptDir, latest.Key)
		go func() {
			var err error
			st.ckpt, err = d.readCheckpoint(ctx, latest)
			ckptDone <- err
		}()
	}
	hdrs, seqs, err := d.loadLogAfter(ctx, st.base)
	if err := cmpErr(<-ckptDone, err); err != nil {
		return nil, err
	}
	if st.ckpt != nil && st.ckpt.Seq != st.base {
		return nil, fmt.Errorf("%s: %w", latest.Key, corrupt("holds the checkpoint after log object %d", st.ckpt.Seq))
	}
	st.hdrs, st.max = hdrs, st.base
	for _, s := range seqs {
		st.max = max(st.max, s)
	}
	return st, nil
}

// latestCheckpoint returns the last checkpoint of the image (a zero
// ObjectInfo without one): the listing Open started while it read the
// image's meta, or a new one.
func (d *Disk) latestCheckpoint(ctx context.Context) (ObjectInfo, error) {
	if f := d.ckptList; f != nil {
		d.ckptList = nil
		return f.wait()
	}
	return listLatestCheckpoint(ctx, d.store, d.prefix)
}

func listLatestCheckpoint(ctx context.Context, store Store, prefix string) (ObjectInfo, error) {
	var latest ObjectInfo
	err := store.List(ctx, prefix+ckptDir, "", func(o ObjectInfo) bool {
		if _, ok := parseSeqKey(prefix, ckptDir, o.Key); ok {
			latest = o
		}
		return true
	})
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("list checkpoints: %w", err)
	}
	return latest, nil
}

// loadLogAfter lists the log objects after base and reads their headers.
func (d *Disk) loadLogAfter(ctx context.Context, base uint64) (map[uint64]*logHeader, []uint64, error) {
	var seqs []uint64
	err := d.store.List(ctx, d.prefix+logDir, d.key(logDir, base), func(o ObjectInfo) bool {
		if seq, ok := parseSeqKey(d.prefix, logDir, o.Key); ok && seq > base {
			seqs = append(seqs, seq)
		}
		return true
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list log: %w", err)
	}
	hdrs := map[uint64]*logHeader{}
	if err := d.readHeaders(ctx, hdrs, seqs); err != nil {
		return nil, nil, err
	}
	return hdrs, seqs, nil
}

func (d *Disk) readCheckpoint(ctx context.Context, o ObjectInfo) (*checkpoint, error) {
	if o.Size < 0 { // not listed: the fixed part says how long it is
		var fixed [ckptFixedSize]byte
		if _, err := d.store.ReadAt(ctx, o.Key, fixed[:], 0); err != nil {
			return nil, fmt.Errorf("read %s: %w", o.Key, err)
		}
		o.Size = ckptFixedSize + int64(binary.BigEndian.Uint32(fixed[48:]))*ckptSegSize +
			int64(binary.BigEndian.Uint64(fixed[56:])%(maxCkptEntries+1))*ckptExtentSize + 4
	}
	if o.Size > ckptFixedSize+maxCkptEntries*ckptExtentSize {
		return nil, corrupt("checkpoint %s: %d bytes", o.Key, o.Size)
	}
	b := make([]byte, o.Size)
	n, err := d.store.ReadAt(ctx, o.Key, b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", o.Key, err)
	}
	c, err := decodeCheckpoint(b[:n], d.meta.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Key, err)
	}
	return c, nil
}

// readHeaders reads the headers of the log objects seqs into hdrs, 16 at
// a time.
func (d *Disk) readHeaders(ctx context.Context, hdrs map[uint64]*logHeader, seqs []uint64) error {
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, seq := range seqs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			h, err := d.readHeader(ctx, seq)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmpErr(firstErr, err)
				return
			}
			hdrs[seq] = h
		}()
	}
	wg.Wait()
	return firstErr
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// headerProbe is how much of a log object the first read fetches: the
// whole header of a segment of up to ~2000 extents.
const headerProbe = 64 << 10

// readHeader reads and decodes the header of log object seq: one ranged
// GET, two for a header longer than headerProbe.
func (d *Disk) readHeader(ctx context.Context, seq uint64) (*logHeader, error) {
	key := d.key(logDir, seq)
	b := make([]byte, headerProbe)
	n, err := d.store.ReadAt(ctx, key, b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	size, err := logHeaderSize(b[:n])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if size > n {
		if n != len(b) {
			return nil, fmt.Errorf("%s: %w", key, corrupt("object ends inside its header"))
		}
		b = append(b, make([]byte, size-n)...)
		m, err := d.store.ReadAt(ctx, key, b[n:], int64(n))
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		n += m
	}
	h, err := decodeLogHeader(b[:n], d.meta.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if h.Seq != seq {
		return nil, fmt.Errorf("%s: %w", key, corrupt("holds log object %d", h.Seq))
	}
	return h, nil
}

// tail is what the log says about its writer.
type tail struct {
	epoch  Epoch   // the highest epoch seen
	kind   objKind // of the last object that counts (0: none)
	closed bool    // no writer holds the image
}

// effective walks the log in sequence order and returns the objects that
// count: an object whose epoch is below one already seen at a lower
// sequence number was written by a fenced writer and is ignored. ignored
// gets the others.
func effective(st *loadState) (eff []*logHeader, ignored []uint64, t tail) {
	t.closed = true
	if st.ckpt != nil {
		t.epoch, t.closed = st.ckpt.Epoch, st.ckpt.Closed
	}
	seqs := make([]uint64, 0, len(st.hdrs))
	for s := range st.hdrs {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, s := range seqs {
		h := st.hdrs[s]
		if h.Epoch.Less(t.epoch) {
			ignored = append(ignored, s)
			continue
		}
		t.epoch, t.kind, t.closed = h.Epoch, h.Kind, h.Kind == objClose
		eff = append(eff, h)
	}
	return eff, ignored, t
}

// apply builds the map from the checkpoint and the effective log objects.
func (d *Disk) apply(st *loadState) tail {
	d.applyCheckpoint(st)
	return d.applyLog(st)
}

// applyCheckpoint builds the map from the checkpoint alone. It reads
// nothing of st but the checkpoint, so it may run while a claim adds to
// st's headers.
func (d *Disk) applyCheckpoint(st *loadState) {
	if st.ckpt != nil {
		for _, r := range st.ckpt.Segs {
			d.segs[r.Seq] = &segment{seq: r.Seq, hdrLen: r.HdrLen, dataLen: r.DataLen, landed: true, durable: true}
			d.dataBytes += r.DataLen
		}
		d.m.load(st.ckpt.Extents)
		var seg *segment // the extent before's: the next is often in it too
		for _, e := range st.ckpt.Extents {
			if e.kind != kindData {
				continue
			}
			if seg == nil || seg.seq != e.seg {
				seg = d.segs[e.seg]
			}
			seg.live += e.len
		}
		d.ckpt.seq = st.ckpt.Seq
		d.ckpt.refs = map[uint64]bool{}
		for _, r := range st.ckpt.Segs {
			d.ckpt.refs[r.Seq] = true
		}
	}
}

// applyLog applies the effective log objects after the checkpoint to the
// map applyCheckpoint built.
func (d *Disk) applyLog(st *loadState) tail {
	eff, ignored, t := effective(st)
	for _, h := range eff {
		if h.Kind != objSegment {
			d.garbage = append(d.garbage, h.Seq)
			continue
		}
		d.segs[h.Seq] = &segment{seq: h.Seq, hdrLen: int64(h.size()), dataLen: h.DataLen, landed: true, durable: true}
		d.dataBytes += h.DataLen
		for _, e := range h.Extents {
			d.mapExtentLocked(h.Seq, e)
		}
	}
	d.garbage = append(d.garbage, ignored...)
	d.epoch = t.epoch
	d.lastTail = t
	return t
}
