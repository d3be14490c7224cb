package logdisk

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nbdd/nbdd/backend"
)

// A clone is an image whose meta names a sealed snapshot of another image
// (its base). It has its own log, epochs, fencing, checkpoints and
// garbage collection, all under its own prefix; a range its map has no
// entry for reads through to the base, while its hole and zero entries
// (TRIM, WRITE_ZEROES) mask the base. The base is opened read-only at the
// snapshot's checkpoint, which never changes, so clones of one snapshot
// in one process share one base Disk through Bases: one map, one read
// cache. docs/s3.md "Snapshots and clones".

// cloneState is what a clone's Disk keeps of its base.
type cloneState struct {
	base    *Disk  // the base snapshot, read-only; nil for an image that is no clone
	release func() // gives base back
}

// maxCloneDepth bounds a chain of clones of clones.
const maxCloneDepth = 16

// extentBase marks, in a clone's block status before the base is asked,
// a range the clone never wrote.
const extentBase backend.ExtentFlags = 1 << 31

// Bases shares the base snapshots of clones among the Disks opened with
// it (Config.Bases): a snapshot that several clones read through to is
// opened once, with one map and one read cache, and closed when the last
// of them closes. The zero value is ready to use. One process normally
// has one.
type Bases struct {
	mu   sync.Mutex
	open map[string]*sharedBase
}

type sharedBase struct {
	ready chan struct{} // closed once d or err is set
	d     *Disk
	err   error
	refs  int // guarded by Bases.mu
}

// Open returns the number of base snapshots open.
func (b *Bases) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.open)
}

// acquire returns the Disk known as key, opening it with open unless this
// Bases holds it already, and the function that gives it back. A nil
// Bases opens a Disk for the caller alone.
func (b *Bases) acquire(key string, open func() (*Disk, error)) (*Disk, func(), error) {
	if b == nil {
		d, err := open()
		if err != nil {
			return nil, nil, err
		}
		return d, func() { d.Close() }, nil
	}
	b.mu.Lock()
	if b.open == nil {
		b.open = map[string]*sharedBase{}
	}
	sb, found := b.open[key]
	if !found {
		sb = &sharedBase{ready: make(chan struct{})}
		b.open[key] = sb
	}
	sb.refs++
	b.mu.Unlock()
	if !found {
		sb.d, sb.err = open()
		close(sb.ready)
	}
	<-sb.ready
	if sb.err != nil {
		b.put(key, sb)
		return nil, nil, sb.err
	}
	var once sync.Once
	return sb.d, func() { once.Do(func() { b.put(key, sb) }) }, nil
}

func (b *Bases) put(key string, sb *sharedBase) {
	b.mu.Lock()
	sb.refs--
	last := sb.refs == 0
	if last && b.open[key] == sb {
		delete(b.open, key)
	}
	b.mu.Unlock()
	if last && sb.d != nil {
		sb.d.Close()
	}
}

func (c *Config) baseStore(ctx context.Context, bucket string) (Store, error) {
	if c.BaseStore == nil {
		return c.Store, nil
	}
	return c.BaseStore(ctx, bucket)
}

// openBase opens a clone's base snapshot, through Config.Bases, and checks
// that it is the one the clone was made from.
func (d *Disk) openBase(ctx context.Context) error {
	if d.meta.Base == "" {
		return nil
	}
	ref, err := ParseRef(d.meta.Base)
	if err != nil {
		return err
	}
	if d.cfg.depth >= maxCloneDepth {
		return fmt.Errorf("base %s: clones of clones %d deep; at most %d are read through", ref, d.cfg.depth+1, maxCloneDepth)
	}
	st, err := d.cfg.baseStore(ctx, ref.Bucket)
	if err != nil {
		return fmt.Errorf("base %s: %w", ref, err)
	}
	cfg := Config{
		Store: st, Prefix: ref.KeyPrefix(), ReadOnly: true, Snapshot: ref.Snapshot,
		Reads: d.cfg.Reads, CacheSize: d.cfg.CacheSize, ReadAhead: d.cfg.ReadAhead, Logger: d.cfg.Logger,
		Bases: d.cfg.Bases, BaseStore: d.cfg.BaseStore, depth: d.cfg.depth + 1,
	}
	base, release, err := d.cfg.Bases.acquire(ref.String()+"#"+d.meta.BaseID, func() (*Disk, error) { return Open(ctx, cfg) })
	if err != nil {
		return fmt.Errorf("base %s: %w", ref, err)
	}
	base.mu.Lock()
	id, ckpt, size := base.meta.ID, base.ckpt.seq, base.meta.Size
	base.mu.Unlock()
	if id != d.meta.BaseID || ckpt != d.meta.BaseCheckpoint || size != d.meta.Size {
		release()
		return fmt.Errorf("base %s is not the snapshot this clone was made from (image %s, checkpoint %d, %d bytes; the clone's meta says image %s, checkpoint %d, %d bytes)",
			ref, id, ckpt, size, d.meta.BaseID, d.meta.BaseCheckpoint, d.meta.Size)
	}
	d.clone = cloneState{base: base, release: release}
	return nil
}

// releaseBase gives the base back; the Disk reads no more.
func (d *Disk) releaseBase() {
	if d.clone.release != nil {
		d.clone.release()
		d.clone = cloneState{}
	}
}

// missLocked handles dst, at export offset off, where the map has no
// entry: zeroes, or for a clone a piece read from the base.
func (d *Disk) missLocked(pieces []piece, dst []byte, off int64) []piece {
	if len(dst) == 0 {
		return pieces
	}
	if d.clone.base == nil {
		clear(dst)
		return pieces
	}
	return append(pieces, piece{dst: dst, m: mapping{off: off, len: int64(len(dst))}, base: true})
}

// readBase reads a clone's piece from its base.
func (d *Disk) readBase(pc piece) error {
	_, err := d.clone.base.ReadAt(pc.dst, pc.m.off)
	return err
}

// gapFlags is what block status says of a range the map has no entry
// for: a hole, or for a clone, what the base says there (emitExtents).
func (d *Disk) gapFlags() backend.ExtentFlags {
	if d.clone.base != nil {
		return extentBase
	}
	return backend.ExtentHole | backend.ExtentZero
}

// emitExtents passes exts to fn, in place of each range a clone never
// wrote the base's extents there: a clone's block status is the union of
// its own map and its base's.
func (d *Disk) emitExtents(exts []backend.Extent, fn func(backend.Extent) bool) error {
	for _, e := range exts {
		if e.Flags != extentBase {
			if !fn(e) {
				return nil
			}
			continue
		}
		more := true
		err := d.clone.base.Extents(e.Offset, e.Length, func(b backend.Extent) bool {
			more = fn(b)
			return more
		})
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// cacheBase prefetches from a clone's base the parts of [off, end) that
// the clone never wrote (NBD_CMD_CACHE).
func (d *Disk) cacheBase(off, end int64) error {
	if d.clone.base == nil {
		return nil
	}
	type gap struct{ off, len int64 }
	var gaps []gap
	pos := off
	d.mu.Lock()
	d.m.each(off, end, func(m mapping) bool {
		if m.off > pos {
			gaps = append(gaps, gap{pos, m.off - pos})
		}
		pos = m.end()
		return true
	})
	d.mu.Unlock()
	if pos < end {
		gaps = append(gaps, gap{pos, end - pos})
	}
	for _, g := range gaps {
		if err := d.clone.base.Cache(g.off, g.len); err != nil {
			return err
		}
	}
	return nil
}

// CloneEntry is one clone registered on an image's snapshot, as
// P/clones/<id> holds it.
type CloneEntry struct {
	ID       string    `json:"-"`        // the clone's image ID
	Image    string    `json:"image"`    // the clone, as CreateClone was told to name it
	Snapshot string    `json:"snapshot"` // the snapshot of P it reads through to
	Created  time.Time `json:"created,omitzero"`
}

// CreateClone creates an empty image under cfg.Prefix over the sealed
// snapshot base: its ranges never written read through to the base. It
// has the base's size. name is how the base's registry names the clone
// (normally its s3:// reference).
//
// The clone is registered first, as P/clones/<id> (put-if-absent) under
// the base image, so the snapshot cannot be removed while the clone
// exists; then the snapshot is checked to be there and not being removed
// (RemoveSnapshot); then the clone's meta is written with put-if-absent.
// A failure after the registration removes it again.
func CreateClone(ctx context.Context, cfg Config, base Ref, name string) error {
	if base.Snapshot == "" {
		return fmt.Errorf("base %s: a clone reads through to a sealed snapshot: name one as %s@SNAPSHOT", base, base)
	}
	bst, err := cfg.baseStore(ctx, base.Bucket)
	if err != nil {
		return fmt.Errorf("base %s: %w", base, err)
	}
	bp := base.KeyPrefix()
	bmeta, err := readMeta(ctx, bst, bp)
	if err != nil {
		return fmt.Errorf("base %s: %w", base.Image(), err)
	}
	so, err := readSnapshot(ctx, bst, bp, base.Snapshot)
	if err != nil {
		return fmt.Errorf("base %s: %w", base.Image(), err)
	}
	if err := checkDepth(ctx, cfg, bmeta); err != nil {
		return err
	}
	var id [16]byte
	rand.Read(id[:])
	m := Meta{Format: formatName, Version: formatV1, ID: hex.EncodeToString(id[:]), Size: bmeta.Size, Window: defaultWindow,
		Base: base.String(), BaseID: bmeta.ID, BaseCheckpoint: so.Checkpoint}
	reg := bp + clonesDir + m.ID
	b, _ := json.Marshal(CloneEntry{Image: name, Snapshot: base.Snapshot, Created: time.Now().UTC().Truncate(time.Second)})
	if err := bst.PutIfAbsent(ctx, reg, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("register the clone with %s: %w", base.Image(), err)
	}
	undo := func(err error) error {
		bst.Delete(context.WithoutCancel(ctx), []string{reg})
		return err
	}
	if _, err := readSnapshot(ctx, bst, bp, base.Snapshot); err != nil {
		return undo(fmt.Errorf("base %s: %w", base.Image(), err))
	}
	if removing, err := exists(ctx, bst, bp+snapRmDir+base.Snapshot); err != nil || removing {
		return undo(cmpErr(err, fmt.Errorf("base %s: %w", base, ErrSnapshotRemoving)))
	}
	if err := putMeta(ctx, cfg.Store, cfg.Prefix, m); err != nil {
		return undo(err)
	}
	return nil
}

// checkDepth refuses a clone whose chain of bases would be deeper than
// maxCloneDepth.
func checkDepth(ctx context.Context, cfg Config, m Meta) error {
	for depth := 1; m.Base != ""; depth++ {
		if depth >= maxCloneDepth {
			return fmt.Errorf("base %s: clones of clones at most %d deep", m.Base, maxCloneDepth)
		}
		ref, err := ParseRef(m.Base)
		if err != nil {
			return err
		}
		st, err := cfg.baseStore(ctx, ref.Bucket)
		if err != nil {
			return err
		}
		if m, err = readMeta(ctx, st, ref.KeyPrefix()); err != nil {
			return fmt.Errorf("base %s: %w", ref.Image(), err)
		}
	}
	return nil
}

// putMeta writes an image's meta with put-if-absent.
func putMeta(ctx context.Context, st Store, prefix string, m Meta) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	err := st.PutIfAbsent(ctx, prefix+metaKey, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, ErrExists) {
		return ErrImageExists
	}
	return err
}

// exists reports whether the store holds key.
func exists(ctx context.Context, st Store, key string) (bool, error) {
	var b [1]byte
	_, err := st.ReadAt(ctx, key, b[:], 0)
	switch {
	case errors.Is(err, ErrNotFound):
		return false, nil
	case err == nil || errors.Is(err, io.EOF):
		return true, nil
	}
	return false, err
}

// ListClones returns the clones registered on the image's snapshots.
func ListClones(ctx context.Context, st Store, prefix string) ([]CloneEntry, error) {
	var keys []string
	err := st.List(ctx, prefix+clonesDir, "", func(o ObjectInfo) bool {
		keys = append(keys, o.Key)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list clones: %w", err)
	}
	var out []CloneEntry
	for _, k := range keys {
		b := make([]byte, 4096)
		n, err := st.ReadAt(ctx, k, b, 0)
		if errors.Is(err, ErrNotFound) {
			continue // removed since the list
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		e, err := decodeCloneEntry(b[:n])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		e.ID = strings.TrimPrefix(k, prefix+clonesDir)
		out = append(out, e)
	}
	return out, nil
}

// decodeCloneEntry parses the body of clones/ID.
func decodeCloneEntry(b []byte) (CloneEntry, error) {
	var e CloneEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return CloneEntry{}, corrupt("clone entry: %v", err)
	}
	if ValidSnapshotName(e.Snapshot) != nil {
		return CloneEntry{}, corrupt("clone entry: snapshot %q", e.Snapshot)
	}
	return e, nil
}

// imageDirs are the key prefixes of an image's objects besides its meta.
var imageDirs = []string{logDir, ckptDir, snapDir, clonesDir, snapRmDir, probeDir}

// Remove deletes the image under cfg.Prefix: for a clone first its entry
// in its base's registry, then every object of the image's layout, its
// meta last, so that a removal stopped half-way can be run again. It
// refuses an image with snapshots (remove them first) and, unless force,
// one a writer holds (or that the log cannot tell). Objects under the
// prefix that are not the image's own are left alone.
func Remove(ctx context.Context, cfg Config, force bool) error {
	meta, err := readMeta(ctx, cfg.Store, cfg.Prefix)
	if err != nil {
		return err
	}
	snaps, err := ListSnapshots(ctx, cfg.Store, cfg.Prefix)
	if err != nil {
		return err
	}
	if len(snaps) > 0 {
		names := make([]string, len(snaps))
		for i, s := range snaps {
			names[i] = s.Name
		}
		return fmt.Errorf("%w: %s", ErrHasSnapshots, strings.Join(names, ", "))
	}
	if !force {
		if err := checkNotHeld(ctx, cfg, meta); err != nil {
			return err
		}
	}
	if meta.Base != "" {
		ref, err := ParseRef(meta.Base)
		if err != nil {
			return err
		}
		bst, err := cfg.baseStore(ctx, ref.Bucket)
		if err != nil {
			return err
		}
		if err := bst.Delete(ctx, []string{ref.KeyPrefix() + clonesDir + meta.ID}); err != nil {
			return fmt.Errorf("unregister from %s: %w", ref.Image(), err)
		}
	}
	for _, dir := range imageDirs {
		if err := deleteAll(ctx, cfg.Store, cfg.Prefix+dir); err != nil {
			return err
		}
	}
	return cfg.Store.Delete(ctx, []string{cfg.Prefix + metaKey})
}

// checkNotHeld refuses an image whose log's last object that counts is
// not a close.
func checkNotHeld(ctx context.Context, cfg Config, meta Meta) error {
	cfg.ReadOnly, cfg.CacheSize, cfg.Snapshot = true, -1, ""
	d := newDisk(cfg, meta)
	defer d.cancel()
	st, err := d.loadLog(ctx)
	if err != nil {
		return err
	}
	if _, _, t := effective(st); !t.closed {
		return fmt.Errorf("%w (writer epoch %d; its nbdd may still run, or died without closing)", ErrInUse, t.epoch.N)
	}
	return nil
}

// deleteAll deletes every object whose key starts with prefix.
func deleteAll(ctx context.Context, st Store, prefix string) error {
	var keys []string
	err := st.List(ctx, prefix, "", func(o ObjectInfo) bool {
		keys = append(keys, o.Key)
		return true
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		if err := st.Delete(ctx, keys[:n]); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		keys = keys[n:]
	}
	return nil
}
