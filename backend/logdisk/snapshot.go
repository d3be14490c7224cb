package logdisk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Errors of snapshots and clones.
var (
	// ErrNoSnapshot is returned for a snapshot that does not exist.
	ErrNoSnapshot = errors.New("no such snapshot")
	// ErrSnapshotExists is returned by Snapshot for a name in use.
	ErrSnapshotExists = errors.New("a snapshot of that name exists")
	// ErrSnapshotReadOnly is returned by a writable Open of a snapshot.
	ErrSnapshotReadOnly = errors.New("a snapshot is read-only: serve it ro, or write a clone of it")
	// ErrHasSnapshots is returned by Remove of an image with snapshots.
	ErrHasSnapshots = errors.New("the image has snapshots")
	// ErrHasClones is returned by RemoveSnapshot of a snapshot that clones
	// read through to.
	ErrHasClones = errors.New("the snapshot has clones")
	// ErrSnapshotRemoving is returned by CreateClone while the snapshot is
	// being removed.
	ErrSnapshotRemoving = errors.New("the snapshot is being removed")
)

// SnapshotInfo describes a sealed snapshot.
type SnapshotInfo struct {
	Name       string
	Checkpoint uint64    // the checkpoint it pins
	Created    time.Time // as the sealing host's clock said; for people only
	Clones     []CloneEntry
}

// Snapshot seals the snapshot name of the image under cfg.Prefix, with or
// without a writer serving it, and without disturbing one: it writes
// nothing to the log. It pins the image as its log's longest complete
// prefix stands: every log object up to the last one before the first
// missing number. That holds every write a FLUSH or FUA acknowledged
// before Snapshot began (a FLUSH returns only once every log object up to
// it is in the store), and is crash-consistent: what the image would hold
// had its writer died there. Where no checkpoint covers that prefix,
// Snapshot writes one (put-if-absent; a checkpoint at a sequence number
// says the same whoever writes it). Then it writes P/snap/NAME with
// put-if-absent, naming the checkpoint; garbage collection keeps that
// checkpoint and every segment it references for as long as the
// snapshot exists.
func Snapshot(ctx context.Context, cfg Config, name string) (SnapshotInfo, error) {
	if err := ValidSnapshotName(name); err != nil {
		return SnapshotInfo{}, err
	}
	meta, err := readMeta(ctx, cfg.Store, cfg.Prefix)
	if err != nil {
		return SnapshotInfo{}, err
	}
	cfg.ReadOnly, cfg.CacheSize, cfg.Snapshot = true, -1, ""
	d := newDisk(cfg, meta)
	defer d.cancel()
	st, err := d.loadLog(ctx)
	if err != nil {
		return SnapshotInfo{}, err
	}
	ck, err := d.prefixCheckpoint(ctx, st, completePrefix(st))
	if err != nil {
		return SnapshotInfo{}, err
	}
	so := snapshotObject{Checkpoint: ck.Seq, Created: time.Now().UTC().Truncate(time.Second)}
	b, _ := json.Marshal(so)
	key := cfg.Prefix + snapDir + name
	if err := cfg.Store.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		if errors.Is(err, ErrExists) {
			return SnapshotInfo{}, fmt.Errorf("%w: %s", ErrSnapshotExists, name)
		}
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", name, err)
	}
	// Garbage collection that decided before the pin existed may have
	// deleted a segment of an older checkpoint: then the snapshot goes.
	if err := d.checkSegments(ctx, ck); err != nil {
		cfg.Store.Delete(context.WithoutCancel(ctx), []string{key})
		return SnapshotInfo{}, fmt.Errorf("snapshot %s not taken (try again): %w", name, err)
	}
	return SnapshotInfo{Name: name, Checkpoint: ck.Seq, Created: so.Created}, nil
}

// completePrefix returns the last sequence number of the log's longest
// complete prefix: numbers after the checkpoint are all taken up to it.
func completePrefix(st *loadState) uint64 {
	x := st.base
	for st.hdrs[x+1] != nil {
		x++
	}
	return x
}

// prefixCheckpoint returns a checkpoint of the log up to x: the loaded
// one if it is at x, else one built from it and the log objects up to x
// and written with put-if-absent (or the one someone wrote there first).
func (d *Disk) prefixCheckpoint(ctx context.Context, st *loadState, x uint64) (*checkpoint, error) {
	if st.ckpt != nil && st.ckpt.Seq == x {
		return st.ckpt, nil
	}
	upTo := &loadState{ckpt: st.ckpt, base: st.base, hdrs: map[uint64]*logHeader{}, max: x}
	for s, h := range st.hdrs {
		if s <= x {
			upTo.hdrs[s] = h
		}
	}
	d.mu.Lock()
	t := d.apply(upTo)
	c := d.snapshotLocked(x, t.closed)
	d.mu.Unlock()
	b := c.appendBinary(make([]byte, 0, c.encodedSize()))
	key := d.key(ckptDir, x)
	err := d.store.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, ErrExists) {
		return d.readCheckpoint(ctx, ObjectInfo{Key: key, Size: -1})
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", x, err)
	}
	return c, nil
}

// checkSegments reports a segment that ck references and the store lacks.
func (d *Disk) checkSegments(ctx context.Context, ck *checkpoint) error {
	have := map[uint64]bool{}
	err := d.store.List(ctx, d.prefix+logDir, "", func(o ObjectInfo) bool {
		seq, ok := parseSeqKey(d.prefix, logDir, o.Key)
		if ok {
			have[seq] = true
		}
		return !ok || seq <= ck.Seq
	})
	if err != nil {
		return fmt.Errorf("list log: %w", err)
	}
	for _, s := range ck.Segs {
		if !have[s.Seq] {
			return fmt.Errorf("segment %d of checkpoint %d was collected", s.Seq, ck.Seq)
		}
	}
	return nil
}

// readSnapshot reads snap/NAME of the image under prefix.
func readSnapshot(ctx context.Context, st Store, prefix, name string) (snapshotObject, error) {
	b := make([]byte, 4096)
	n, err := st.ReadAt(ctx, prefix+snapDir+name, b, 0)
	if errors.Is(err, ErrNotFound) {
		return snapshotObject{}, fmt.Errorf("%w: %s", ErrNoSnapshot, name)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return snapshotObject{}, fmt.Errorf("snapshot %s: %w", name, err)
	}
	so, err := decodeSnapshot(b[:n])
	if err != nil {
		return snapshotObject{}, fmt.Errorf("snapshot %s: %w", name, err)
	}
	return so, nil
}

// decodeSnapshot parses the body of snap/NAME.
func decodeSnapshot(b []byte) (snapshotObject, error) {
	var so snapshotObject
	if err := json.Unmarshal(b, &so); err != nil {
		return snapshotObject{}, corrupt("snapshot: %v", err)
	}
	return so, nil
}

// load reads what the Disk opens on: the snapshot's checkpoint for a
// snapshot, else the latest checkpoint and the log after it.
func (d *Disk) load(ctx context.Context) (*loadState, error) {
	if d.cfg.Snapshot == "" {
		return d.loadLog(ctx)
	}
	so, err := readSnapshot(ctx, d.store, d.prefix, d.cfg.Snapshot)
	if err != nil {
		return nil, err
	}
	ck, err := d.readCheckpoint(ctx, ObjectInfo{Key: d.key(ckptDir, so.Checkpoint), Size: -1})
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", d.cfg.Snapshot, err)
	}
	return &loadState{ckpt: ck, base: ck.Seq, hdrs: map[uint64]*logHeader{}, max: ck.Seq}, nil
}

// unpinned drops from keys the objects that snapshots pin now. The sweep
// decided on the pins it read before listing; a snapshot sealed since
// must still keep what it names, so they are read again right before
// deleting (Snapshot checks its segments after writing its pin).
func (d *Disk) unpinned(keys []string) ([]string, error) {
	if len(keys) == 0 {
		return keys, nil
	}
	segs, ckpts, err := d.pinned()
	if err != nil {
		return nil, err
	}
	out := keys[:0]
	for _, k := range keys {
		if seq, ok := parseSeqKey(d.prefix, logDir, k); ok && segs[seq] {
			continue
		}
		if seq, ok := parseSeqKey(d.prefix, ckptDir, k); ok && ckpts[seq] {
			continue
		}
		out = append(out, k)
	}
	return out, nil
}

// ListSnapshots returns the image's snapshots in name order, each with
// the clones registered on it.
func ListSnapshots(ctx context.Context, st Store, prefix string) ([]SnapshotInfo, error) {
	var names []string
	err := st.List(ctx, prefix+snapDir, "", func(o ObjectInfo) bool {
		names = append(names, strings.TrimPrefix(o.Key, prefix+snapDir))
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	clones, err := ListClones(ctx, st, prefix)
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, name := range names {
		so, err := readSnapshot(ctx, st, prefix, name)
		if errors.Is(err, ErrNoSnapshot) {
			continue // removed since the list
		}
		if err != nil {
			return nil, err
		}
		si := SnapshotInfo{Name: name, Checkpoint: so.Checkpoint, Created: so.Created}
		for _, c := range clones {
			if c.Snapshot == name {
				si.Clones = append(si.Clones, c)
			}
		}
		out = append(out, si)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RemoveSnapshot deletes the snapshot name of the image under cfg.Prefix,
// refusing while a clone is registered on it. The objects it pinned go at
// the image's next garbage collection.
//
// It first writes P/snaprm/NAME, then lists the clones, then deletes the
// snapshot and the mark; CreateClone registers its clone, then checks for
// the snapshot and the mark. Whichever comes second sees the other: a
// clone is never made on a snapshot being removed, nor a snapshot removed
// under a clone being made.
func RemoveSnapshot(ctx context.Context, cfg Config, name string) error {
	st, p := cfg.Store, cfg.Prefix
	if _, err := readSnapshot(ctx, st, p, name); err != nil {
		return err
	}
	mark := p + snapRmDir + name
	body := []byte("removing\n")
	if err := st.PutIfAbsent(ctx, mark, bytes.NewReader(body), int64(len(body))); err != nil && !errors.Is(err, ErrExists) {
		return fmt.Errorf("remove snapshot %s: %w", name, err) // ErrExists: an earlier removal stopped half-way
	}
	clones, err := ListClones(ctx, st, p)
	if err != nil {
		st.Delete(context.WithoutCancel(ctx), []string{mark})
		return err
	}
	var names []string
	for _, c := range clones {
		if c.Snapshot == name {
			names = append(names, c.Image)
		}
	}
	if len(names) > 0 {
		st.Delete(context.WithoutCancel(ctx), []string{mark})
		return fmt.Errorf("%w: %s", ErrHasClones, strings.Join(names, ", "))
	}
	if err := st.Delete(ctx, []string{p + snapDir + name}); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", name, err)
	}
	return st.Delete(ctx, []string{mark})
}
