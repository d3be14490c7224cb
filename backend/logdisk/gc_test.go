package logdisk

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestGCReclaimsOverwrites overwrites the image twice with random 4 KiB
// writes, then checks that GC brings the stored bytes within 1.5x of the
// live data and that the data is intact.
func TestGCReclaimsOverwrites(t *testing.T) {
	st := NewMemStore()
	const size = 4 << 20
	createImage(t, st, size)
	cfg := testConfig(t, st)
	d := openDisk(t, cfg)
	model := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 1))
	for pass := range 3 {
		for _, blk := range r.Perm(size / 4096) {
			p := fill(4096, uint64(pass*100000+blk))
			mustWrite(t, d, p, int64(blk)*4096)
			copy(model[blk*4096:], p)
		}
		mustSync(t, d)
	}
	_, before := st.Bytes(testPrefix)
	if err := d.GC(0); err != nil {
		t.Fatalf("GC: %v", err)
	}
	_, after := st.Bytes(testPrefix)
	in := d.Info()
	t.Logf("stored %d bytes before GC, %d after; live %d", before, after, in.LiveBytes)
	if in.LiveBytes != size {
		t.Fatalf("live bytes %d; want %d", in.LiveBytes, size)
	}
	if float64(after) > 1.5*float64(size) {
		t.Fatalf("after GC the image takes %d bytes; want at most 1.5 x %d", after, size)
	}
	requireEqual(t, readAll(t, st), model, "after GC")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, readAll(t, st), model, "after GC and Close")
}

// TestGCKeepsSnapshotSegments: a snapshot object pins its checkpoint and
// every segment it references.
func TestGCKeepsSnapshotSegments(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	d := openDisk(t, testConfig(t, st))
	x := fill(1<<20, 1)
	mustWrite(t, d, x, 0)
	if err := d.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	c := d.Info().Checkpoint
	snap := []byte(`{"checkpoint": ` + itoa(c) + `}`)
	if err := st.PutIfAbsent(t.Context(), testPrefix+snapDir+"s1", newBytesReader(snap), int64(len(snap))); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, fill(1<<20, 2), 0)
	if err := d.GC(0); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Object(d.key(ckptDir, c)); !ok {
		t.Fatal("GC deleted the snapshot's checkpoint")
	}
	// Every segment the snapshot's checkpoint names is still there.
	ck, err := d.readCheckpoint(t.Context(), ObjectInfo{Key: d.key(ckptDir, c), Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ck.Segs {
		if _, ok := st.Object(d.key(logDir, s.Seq)); !ok {
			t.Fatalf("GC deleted segment %d, which the snapshot references", s.Seq)
		}
	}
}

// TestReaderReloadsAfterGC: a read-only Disk opened before GC deleted the
// segments it names reloads the log and reads the current data.
func TestReaderReloadsAfterGC(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	w := openDisk(t, testConfig(t, st))
	mustWrite(t, w, fill(1<<20, 1), 0)
	mustSync(t, w)
	cfg := testConfig(t, st)
	cfg.ReadOnly = true
	cfg.CacheSize = -1
	r := openDisk(t, cfg)
	x := fill(1<<20, 2)
	mustWrite(t, w, x, 0)
	if err := w.GC(0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatalf("read after GC: %v", err)
	}
	requireEqual(t, got, x, "a reader opened before GC")
}

// TestGCCompactsWhenIdle: with a quarter to a half of the stored data
// dead, the background pass leaves compaction for when the clients pause;
// with half dead it compacts at once.
func TestGCCompactsWhenIdle(t *testing.T) {
	st := NewMemStore()
	const size = 4 << 20
	createImage(t, st, size)
	d := openDisk(t, testConfig(t, st))
	mustWrite(t, d, fill(size, 1), 0)
	mustSync(t, d)
	r := rand.New(rand.NewPCG(2, 2))
	blocks := r.Perm(size / 4096)
	overwrite := func(bs []int) {
		for _, b := range bs {
			mustWrite(t, d, fill(4096, uint64(b)), int64(b)*4096)
		}
		mustSync(t, d)
	}
	compacts := func(what string, want bool) {
		t.Helper()
		before := d.Stats().PutBytes
		if err := d.collect(false, 0); err != nil {
			t.Fatal(err)
		}
		if got := d.Stats().PutBytes > before; got != want {
			t.Fatalf("%s: compacted %v; want %v", what, got, want)
		}
	}
	overwrite(blocks[:len(blocks)*2/5]) // 29 % of the stored bytes dead
	compacts("right after the writes", false)
	d.lastWrite.Store(time.Now().Add(-time.Hour).UnixNano())
	compacts("once the clients have paused", true)

	for range 3 {
		overwrite(blocks[:len(blocks)/2]) // more than half dead
	}
	compacts("with half the stored data dead", true)
}
