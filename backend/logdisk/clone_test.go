package logdisk

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nbdd/nbdd/backend"
)

const (
	basePrefix  = "base/"
	clonePrefix = "clone/"
)

func withPrefix(cfg Config, prefix string) Config {
	cfg.Prefix = prefix
	return cfg
}

// newBase creates a 1 MiB image under basePrefix holding x at 0 (the
// rest never written), seals snapshot s1 of it, and returns the store.
func newBase(t *testing.T, x []byte) *MemStore {
	t.Helper()
	st := NewMemStore()
	cfg := withPrefix(testConfig(t, st), basePrefix)
	if err := Create(t.Context(), cfg, 1<<20); err != nil {
		t.Fatal(err)
	}
	d := openDisk(t, cfg)
	mustWrite(t, d, x, 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Snapshot(t.Context(), cfg, "s1"); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return st
}

// newClone creates a clone of base@s1 under prefix.
func newClone(t *testing.T, st Store, prefix string) Config {
	t.Helper()
	cfg := withPrefix(testConfig(t, st), prefix)
	if err := CreateClone(t.Context(), cfg, Ref{Bucket: "b", Prefix: "base", Snapshot: "s1"}, "s3://b/"+strings.TrimSuffix(prefix, "/")); err != nil {
		t.Fatalf("CreateClone: %v", err)
	}
	return cfg
}

func readAt(t testing.TB, d *Disk, n int, off int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := d.ReadAt(b, off); err != nil {
		t.Fatalf("ReadAt %d+%d: %v", off, n, err)
	}
	return b
}

// objects returns a copy of every object under prefix.
func objects(st *MemStore, prefix string) map[string][]byte {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range st.objects {
		if strings.HasPrefix(k, prefix) {
			out[k] = bytes.Clone(v)
		}
	}
	return out
}

func requireSameObjects(t *testing.T, got, want map[string][]byte, what string) {
	t.Helper()
	if !maps.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("%s: the objects changed: %d before, %d after", what, len(want), len(got))
	}
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ref
		err  bool
	}{
		{in: "s3://b/p", want: Ref{Bucket: "b", Prefix: "p"}},
		{in: "s3://b/a/p/", want: Ref{Bucket: "b", Prefix: "a/p"}},
		{in: "s3://b/a/p@snap-1.x", want: Ref{Bucket: "b", Prefix: "a/p", Snapshot: "snap-1.x"}},
		{in: "s3://b/a@x/p", want: Ref{Bucket: "b", Prefix: "a@x/p"}},
		{in: "s3://b/@s", want: Ref{Bucket: "b", Prefix: "", Snapshot: "s"}},
		{in: "s3://b", want: Ref{Bucket: "b"}},
		{in: "s3://b/p@", err: true},
		{in: "s3://b/p@a b", err: true},
		{in: "s3://b/p@.hidden", err: true},
		{in: "s3:///p", err: true},
		{in: "b/p", err: true},
	} {
		got, err := ParseRef(tc.in)
		if tc.err {
			if err == nil {
				t.Errorf("ParseRef(%q) = %+v; want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if back, _ := ParseRef(got.String()); back != got {
			t.Errorf("ParseRef(%q.String()) = %+v; want %+v", got, back, got)
		}
	}
}

// TestSnapshotPinsState: a snapshot reads as the image stood when it was
// sealed, whatever is written after; it cannot be opened writable.
func TestSnapshotPinsState(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	cfg := withPrefix(testConfig(t, st), basePrefix)
	d := openDisk(t, cfg)
	mustWrite(t, d, fill(1<<20, 2), 0)
	mustSync(t, d)

	cfg.Snapshot = "s1"
	if _, err := Open(t.Context(), cfg); !errors.Is(err, ErrSnapshotReadOnly) {
		t.Fatalf("writable Open of a snapshot: %v; want ErrSnapshotReadOnly", err)
	}
	cfg.ReadOnly = true
	snap := openDisk(t, cfg)
	requireEqual(t, readAt(t, snap, 1<<20, 0), x, "the snapshot")
	if _, err := snap.WriteAt([]byte{1}, 0); !errors.Is(err, backend.ErrReadOnly) {
		t.Fatalf("WriteAt on a snapshot: %v; want ErrReadOnly", err)
	}
	if _, err := Snapshot(t.Context(), withPrefix(testConfig(t, st), basePrefix), "s1"); !errors.Is(err, ErrSnapshotExists) {
		t.Fatalf("a second snapshot s1: %v; want ErrSnapshotExists", err)
	}
	cfg.Snapshot = "none"
	if _, err := Open(t.Context(), cfg); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("Open of a missing snapshot: %v; want ErrNoSnapshot", err)
	}
}

// TestSnapshotOfLiveWriter: a snapshot taken while a writer serves the
// image holds every write flushed before it, nothing of a log object that
// has not landed with everything before it, and outlives the writer's
// overwrites and garbage collection.
func TestSnapshotOfLiveWriter(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	g := newGate()
	st.Hook = g.hook
	cfg := testConfig(t, st)
	w := openDisk(t, cfg)
	a := fill(256<<10, 1)
	mustWrite(t, w, a, 0)
	mustSync(t, w)
	// The next segment is held in flight; the one after lands above it.
	next := w.key(logDir, w.nextSeq)
	g.hold(next)
	mustWrite(t, w, fill(256<<10, 2), 256<<10)
	w.mu.Lock()
	w.sealLocked()
	w.mu.Unlock()
	mustWrite(t, w, fill(256<<10, 3), 512<<10)
	w.mu.Lock()
	w.sealLocked()
	w.mu.Unlock()
	waitFor(t, "the segment above the held one lands", func() bool { _, ok := st.Object(w.key(logDir, w.nextSeq-1)); return ok })

	if _, err := Snapshot(t.Context(), cfg, "live"); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	g.release(next)
	mustSync(t, w)
	want := make([]byte, 1<<20)
	copy(want, a) // the held segment and the one above it are not in it
	rcfg := testConfig(t, st)
	rcfg.ReadOnly, rcfg.Snapshot = true, "live"
	requireEqual(t, readAt(t, openDisk(t, rcfg), 1<<20, 0), want, "the live snapshot")

	mustWrite(t, w, fill(1<<20, 4), 0)
	if err := w.GC(0); err != nil {
		t.Fatal(err)
	}
	rcfg.CacheSize = -1
	requireEqual(t, readAt(t, openDisk(t, rcfg), 1<<20, 0), want, "the live snapshot after overwrites and GC")
}

// TestCloneReadsThroughAndMasks: a clone reads the base where it never
// wrote, its own writes where it did, zeroes where it trimmed or zeroed;
// it survives a reopen, and the base's objects never change.
func TestCloneReadsThroughAndMasks(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	cfg := newClone(t, st, clonePrefix)
	before := objects(st, basePrefix)
	c := openDisk(t, cfg)
	requireEqual(t, readAt(t, c, 1<<20, 0), x, "a fresh clone")

	model := bytes.Clone(x)
	y := fill(100<<10, 2)
	mustWrite(t, c, y, 300<<10)
	copy(model[300<<10:], y)
	if err := c.Trim(64<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	clear(model[64<<10 : 128<<10])
	if err := c.WriteZeroes(900<<10, 10<<10, true, false); err != nil {
		t.Fatal(err)
	}
	clear(model[900<<10 : 910<<10])
	requireEqual(t, readAt(t, c, 1<<20, 0), model, "the clone, written")
	// Reads across the boundaries, in small pieces.
	for off := int64(0); off < 1<<20; off += 12345 {
		n := min(int64(7000), 1<<20-off)
		requireEqual(t, readAt(t, c, int(n), off), model[off:off+n], "a small read")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := openDisk(t, cfg)
	requireEqual(t, readAt(t, c2, 1<<20, 0), model, "the clone reopened")
	ro := cfg
	ro.ReadOnly = true
	requireEqual(t, readAt(t, openDisk(t, ro), 1<<20, 0), model, "the clone read-only")
	requireSameObjects(t, objects(st, basePrefix), before, "the base, after the clone was written")
}

// TestCloneBlockStatusUnion: a clone's extents are its own where it wrote
// (data, zero, hole masking the base) and its base's elsewhere.
func TestCloneBlockStatusUnion(t *testing.T) {
	st := newBase(t, fill(256<<10, 1)) // base: data [0, 256K), hole after
	c := openDisk(t, newClone(t, st, clonePrefix))
	mustWrite(t, c, fill(64<<10, 2), 512<<10)
	if err := c.Trim(0, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(128<<10, 64<<10, true, false); err != nil {
		t.Fatal(err)
	}
	var got []backend.Extent
	if err := c.Extents(0, 1<<20, func(e backend.Extent) bool { got = append(got, e); return true }); err != nil {
		t.Fatal(err)
	}
	hole := backend.ExtentHole | backend.ExtentZero
	want := []backend.Extent{
		{Offset: 0, Length: 64 << 10, Flags: hole},                       // trimmed in the clone
		{Offset: 64 << 10, Length: 64 << 10, Flags: 0},                   // the base's data
		{Offset: 128 << 10, Length: 64 << 10, Flags: backend.ExtentZero}, // zeroed in the clone
		{Offset: 192 << 10, Length: 64 << 10, Flags: 0},                  // the base's data
		{Offset: 256 << 10, Length: 256 << 10, Flags: hole},              // the base's hole
		{Offset: 512 << 10, Length: 64 << 10, Flags: 0},                  // the clone's data
		{Offset: 576 << 10, Length: 448 << 10, Flags: hole},              // the base's hole
	}
	if len(got) != len(want) {
		t.Fatalf("extents %+v; want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("extent %d: %+v; want %+v (all: %+v)", i, got[i], want[i], got)
		}
	}
	// Stopping early stops inside the base's part too.
	n := 0
	c.Extents(0, 1<<20, func(backend.Extent) bool { n++; return n < 2 })
	if n != 2 {
		t.Fatalf("fn called %d times after returning false; want 2", n)
	}
}

// TestCloneFencing: the clone's writers fence each other as any image's
// do; the fenced one's write is seen by no reader.
func TestCloneFencing(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	cfg := newClone(t, st, clonePrefix)
	a := openDisk(t, cfg)
	mustWrite(t, a, fill(4096, 2), 0)
	mustSync(t, a)
	other := withPrefix(testConfig(t, st), clonePrefix)
	if _, err := Open(t.Context(), other); !errors.Is(err, ErrInUse) {
		t.Fatalf("second writer of the clone: %v; want ErrInUse", err)
	}
	other.Takeover = true
	b := openDisk(t, other)
	mustWrite(t, a, fill(4096, 3), 8192)
	if err := a.Sync(); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced clone writer's FLUSH: %v; want ErrFenced", err)
	}
	want := bytes.Clone(x)
	copy(want, fill(4096, 2))
	requireEqual(t, readAt(t, b, 1<<20, 0), want, "the taker")
	ro := withPrefix(testConfig(t, st), clonePrefix)
	ro.ReadOnly = true
	requireEqual(t, readAt(t, openDisk(t, ro), 1<<20, 0), want, "a reader of the clone")
}

// TestClonesShareBase: clones of one snapshot opened with one Bases read
// the base through one Disk: the base's segments are fetched once for
// all of them.
func TestClonesShareBase(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	var baseBytes atomic.Int64
	var bases Bases
	const n = 4
	var clones []*Disk
	for i := range n {
		cfg := newClone(t, st, "clone"+itoa(uint64(i))+"/")
		cfg.Bases = &bases
		clones = append(clones, openDisk(t, cfg))
	}
	if got := bases.Open(); got != 1 {
		t.Fatalf("%d base Disks open for %d clones; want 1", got, n)
	}
	base := clones[0].clone.base
	for _, c := range clones {
		requireEqual(t, readAt(t, c, 1<<20, 0), x, "a clone")
		if c.clone.base != base {
			t.Fatal("clones of one snapshot have different base Disks")
		}
	}
	baseBytes.Store(base.Stats().GetBytes)
	if got := baseBytes.Load(); got > 2<<20 {
		t.Fatalf("the base's GETs fetched %d bytes for %d clones reading 1 MiB each; want about 1 MiB (one shared cache)", got, n)
	}
	for i, c := range clones {
		c.Close()
		if want := min(1, n-1-i); bases.Open() != want {
			t.Fatalf("after closing %d clones %d bases are open; want %d", i+1, bases.Open(), want)
		}
	}
}

// TestCloneOfClone: a clone of a clone's snapshot reads through both.
func TestCloneOfClone(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	q := newClone(t, st, clonePrefix)
	d := openDisk(t, q)
	y := fill(64<<10, 2)
	mustWrite(t, d, y, 0)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Snapshot(t.Context(), q, "q1"); err != nil {
		t.Fatal(err)
	}
	r := withPrefix(testConfig(t, st), "r/")
	if err := CreateClone(t.Context(), r, Ref{Bucket: "b", Prefix: "clone", Snapshot: "q1"}, "s3://b/r"); err != nil {
		t.Fatal(err)
	}
	rd := openDisk(t, r)
	z := fill(4096, 3)
	mustWrite(t, rd, z, 512<<10)
	want := bytes.Clone(x)
	copy(want, y)
	copy(want[512<<10:], z)
	requireEqual(t, readAt(t, rd, 1<<20, 0), want, "a clone of a clone")
}

// TestRemoveProtectsBase: a snapshot with clones cannot be removed, nor
// an image with snapshots; removing a clone leaves the base's objects as
// they were and unregisters it, after which the snapshot can go.
func TestRemoveProtectsBase(t *testing.T) {
	st := newBase(t, fill(1<<20, 1))
	bcfg := withPrefix(testConfig(t, st), basePrefix)
	cfg := newClone(t, st, clonePrefix)
	c := openDisk(t, cfg)
	mustWrite(t, c, fill(4096, 2), 0)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	before := objects(st, basePrefix)
	if err := RemoveSnapshot(t.Context(), bcfg, "s1"); !errors.Is(err, ErrHasClones) || !strings.Contains(err.Error(), "s3://b/clone") {
		t.Fatalf("RemoveSnapshot with a clone: %v; want ErrHasClones naming the clone", err)
	}
	if err := Remove(t.Context(), bcfg, false); !errors.Is(err, ErrHasSnapshots) {
		t.Fatalf("Remove of an image with a snapshot: %v; want ErrHasSnapshots", err)
	}
	requireSameObjects(t, objects(st, basePrefix), before, "the base, after refused removals")
	if err := Remove(t.Context(), cfg, false); err != nil {
		t.Fatalf("Remove the clone: %v", err)
	}
	if n, _ := st.Bytes(clonePrefix); n != 0 {
		t.Fatalf("%d objects of the clone remain", n)
	}
	after := objects(st, basePrefix)
	delete(before, basePrefix+clonesDir+readCloneID(t, before))
	requireSameObjects(t, after, before, "the base, after removing the clone (less its registry entry)")
	if err := RemoveSnapshot(t.Context(), bcfg, "s1"); err != nil {
		t.Fatalf("RemoveSnapshot without clones: %v", err)
	}
	if err := Remove(t.Context(), bcfg, false); err != nil {
		t.Fatalf("Remove the base: %v", err)
	}
	if n, _ := st.Bytes(""); n != 0 {
		t.Fatalf("%d objects remain", n)
	}
}

func readCloneID(t *testing.T, objs map[string][]byte) string {
	t.Helper()
	for k := range objs {
		if id, ok := strings.CutPrefix(k, basePrefix+clonesDir); ok {
			return id
		}
	}
	t.Fatal("no clone registered")
	return ""
}

// TestRemoveHeldRefused: an image a writer holds is removed only by force.
func TestRemoveHeldRefused(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	d := openDisk(t, cfg)
	mustWrite(t, d, fill(4096, 1), 0)
	mustSync(t, d)
	if err := Remove(t.Context(), cfg, false); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of a held image: %v; want ErrInUse", err)
	}
	if err := Remove(t.Context(), cfg, true); err != nil {
		t.Fatalf("Remove with force: %v", err)
	}
}

// TestBaseGCKeepsClonedSnapshot: the base's writer overwrites everything
// and collects; the clone still reads the snapshot.
func TestBaseGCKeepsClonedSnapshot(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	cfg := newClone(t, st, clonePrefix)
	cfg.CacheSize = -1
	c := openDisk(t, cfg)
	b := openDisk(t, withPrefix(testConfig(t, st), basePrefix))
	mustWrite(t, b, fill(1<<20, 2), 0)
	mustSync(t, b)
	if err := b.GC(0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, readAt(t, c, 1<<20, 0), x, "the clone after the base's GC")
	ro := withPrefix(testConfig(t, st), clonePrefix)
	ro.ReadOnly, ro.CacheSize = true, -1
	requireEqual(t, readAt(t, openDisk(t, ro), 1<<20, 0), x, "a fresh reader of the clone after the base's GC")
}

// TestCloneRefusesReplacedBase: a clone whose base snapshot was replaced
// behind its back (removed and sealed again elsewhere) refuses to open.
func TestCloneRefusesReplacedBase(t *testing.T) {
	st := newBase(t, fill(1<<20, 1))
	cfg := newClone(t, st, clonePrefix)
	bcfg := withPrefix(testConfig(t, st), basePrefix)
	b := openDisk(t, bcfg)
	mustWrite(t, b, fill(4096, 2), 0)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	st.Delete(t.Context(), []string{basePrefix + snapDir + "s1"}) // not by RemoveSnapshot
	if _, err := Snapshot(t.Context(), bcfg, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "not the snapshot this clone was made from") {
		t.Fatalf("Open of a clone whose base changed: %v; want a refusal", err)
	}
}

// TestCloneRefusedWhileSnapshotRemoved: a removal that has marked the
// snapshot makes a clone of it fail and leaves no registration.
func TestCloneRefusedWhileSnapshotRemoved(t *testing.T) {
	st := newBase(t, fill(1<<20, 1))
	mark := []byte("removing\n")
	st.PutIfAbsent(t.Context(), basePrefix+snapRmDir+"s1", bytes.NewReader(mark), int64(len(mark)))
	cfg := withPrefix(testConfig(t, st), clonePrefix)
	err := CreateClone(t.Context(), cfg, Ref{Bucket: "b", Prefix: "base", Snapshot: "s1"}, "s3://b/clone")
	if !errors.Is(err, ErrSnapshotRemoving) {
		t.Fatalf("CreateClone during a removal: %v; want ErrSnapshotRemoving", err)
	}
	if n, _ := st.Bytes(basePrefix + clonesDir); n != 0 {
		t.Fatal("the refused clone stayed registered")
	}
	if _, ok := st.Object(clonePrefix + metaKey); ok {
		t.Fatal("the refused clone has a meta")
	}
	if err := CreateClone(t.Context(), cfg, Ref{Bucket: "b", Prefix: "base"}, "x"); err == nil {
		t.Fatal("a clone of an image, not a snapshot, was made")
	}
}

// TestSweepRereadsPins: a snapshot sealed while a sweep is under way,
// after the sweep read the pins, keeps its segments: the sweep reads the
// pins again before it deletes.
func TestSweepRereadsPins(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	holdSnap, holdSweep := make(chan struct{}), make(chan struct{})
	snapAtPin, sweepListing := make(chan struct{}, 1), make(chan struct{}, 1)
	var sweeping atomic.Bool
	st.Hook = func(op Op, key string) error {
		switch {
		case op == OpPut && key == testPrefix+snapDir+"s":
			snapAtPin <- struct{}{}
			<-holdSnap
		case op == OpList && key == testPrefix+ckptDir && sweeping.Load():
			sweepListing <- struct{}{}
			<-holdSweep
		}
		return nil
	}
	cfg := testConfig(t, st)
	w := openDisk(t, cfg)
	a := fill(1<<20, 1)
	mustWrite(t, w, a, 0)
	if err := w.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	snapDone := make(chan error, 1)
	go func() { _, err := Snapshot(t.Context(), cfg, "s"); snapDone <- err }()
	<-snapAtPin // the snapshot has loaded the log: it pins the checkpoint written above
	mustWrite(t, w, fill(1<<20, 2), 0)
	if err := w.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	sweeping.Store(true)
	gcDone := make(chan error, 1)
	go func() { gcDone <- w.sweep(0) }()
	<-sweepListing // the sweep has read the pins: none yet
	close(holdSnap)
	if err := <-snapDone; err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	close(holdSweep)
	if err := <-gcDone; err != nil {
		t.Fatalf("sweep: %v", err)
	}
	ro := testConfig(t, st)
	ro.ReadOnly, ro.Snapshot, ro.CacheSize = true, "s", -1
	requireEqual(t, readAt(t, openDisk(t, ro), 1<<20, 0), a, "the snapshot sealed during a sweep")
}

// TestCloneCachePrefetchesBase: NBD_CMD_CACHE on a clone brings what it
// never wrote from the base into the base's cache, so the READ after it
// fetches nothing.
func TestCloneCachePrefetchesBase(t *testing.T) {
	x := fill(1<<20, 1)
	st := newBase(t, x)
	c := openDisk(t, newClone(t, st, clonePrefix))
	mustWrite(t, c, fill(4096, 2), 0)
	if err := c.Cache(0, 1<<20); err != nil {
		t.Fatal(err)
	}
	base := c.clone.base
	fetched := base.Stats().GetBytes
	if fetched < 1<<20-4096 {
		t.Fatalf("CACHE fetched %d bytes of the base; want its 1 MiB but the clone's 4 KiB", fetched)
	}
	want := bytes.Clone(x)
	copy(want, fill(4096, 2))
	requireEqual(t, readAt(t, c, 1<<20, 0), want, "the clone after CACHE")
	if got := base.Stats().GetBytes; got != fetched {
		t.Fatalf("the READ after CACHE fetched %d more bytes of the base; want 0", got-fetched)
	}
}
