package logdisk

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// crash stops d as kill -9 would: no close object, no checkpoint, the
// journal left as it is.
func crash(d *Disk) { d.abandon() }

func TestCrashReplaysJournal(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	a := openDisk(t, cfg)
	x1 := fill(8192, 1)
	mustWrite(t, a, x1, 0)
	mustSync(t, a)
	down := make(chan struct{})
	st.Hook = func(op Op, key string) error {
		select {
		case <-down:
			return nil
		default:
			return errInjected
		}
	}
	x2 := fill(100<<10, 2) // two segments: one sealed, one open
	mustWrite(t, a, x2, 16384)
	x3 := fill(512, 3)
	mustWrite(t, a, x3, 3000)
	if err := a.Trim(200<<10, 8192); err != nil {
		t.Fatal(err)
	}
	crash(a)
	close(down)

	// The same journal, no takeover: the crashed writer was this one.
	b := openDisk(t, cfg)
	want := make([]byte, 1<<20)
	copy(want, x1)
	copy(want[16384:], x2)
	copy(want[3000:], x3)
	clear(want[200<<10 : 200<<10+8192])
	got := make([]byte, 1<<20)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, got, want, "after replay")
	requireEqual(t, readAll(t, st), want, "a reader after replay")
	files, _, _ := listJournals(cfg.JournalDir)
	b.mu.Lock()
	free := map[string]bool{}
	for _, jf := range b.freeJournals {
		free[jf.path] = true
	}
	b.mu.Unlock()
	for _, f := range files {
		if !free[f] {
			t.Fatalf("journal file %s left after replay and flush", f)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if files, _, _ := listJournals(cfg.JournalDir); len(files) != 0 {
		t.Fatalf("%d journal files left after Close", len(files))
	}
}

// TestCrashInReusedJournalFile: a journal file is used again for a later
// segment; after a crash, the records of its earlier use, still in the
// file after the new ones, must not be replayed over newer writes.
func TestCrashInReusedJournalFile(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	a := openDisk(t, cfg)
	want := make([]byte, 64<<10)
	for i := range 4 {
		x := fill(8192, uint64(i+1))
		mustWrite(t, a, x, int64(i)*8192)
		copy(want[i*8192:], x)
	}
	mustSync(t, a)
	a.mu.Lock()
	if len(a.freeJournals) != 1 {
		a.mu.Unlock()
		t.Fatalf("%d free journal files after a FLUSH; want 1", len(a.freeJournals))
	}
	used := a.freeJournals[0].path
	a.mu.Unlock()
	st.Hook = failPuts
	z := fill(8192, 9)
	mustWrite(t, a, z, 8192) // over the first use's second record, whose header follows
	copy(want[8192:], z)
	if a.openSeg.jf.path != used {
		t.Fatalf("the next segment's journal is %s; want the free one, %s", a.openSeg.jf.path, used)
	}
	crash(a)
	st.Hook = nil
	requireReads(t, openDisk(t, cfg), want, "after replaying a reused journal file")
}

// TestCrashAfterUploadBeforeDurable: a later segment landed, an earlier
// one did not; after the restart's claim the later one no longer counts,
// so both are replayed, in order.
func TestCrashPartialUploadReplaysInOrder(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 1<<20)
	var failKey string
	cfg := testConfig(t, mem)
	a := openDisk(t, cfg)
	s := a.nextSeq
	failKey = a.key(logDir, s)
	mem.Hook = func(op Op, key string) error {
		if op == OpPut && key == failKey {
			return errInjected // segment s never lands
		}
		return nil
	}
	old := fill(64<<10, 1)
	mustWrite(t, a, old, 0) // segment s
	newer := fill(64<<10, 2)
	mustWrite(t, a, newer, 0) // segment s+1: lands, overwrites the same range
	waitFor(t, "segment s+1", func() bool { _, ok := mem.Object(a.key(logDir, s+1)); return ok })
	crash(a)
	mem.Hook = nil

	b := openDisk(t, cfg)
	got := make([]byte, 64<<10)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, got, newer, "after replay")
	requireEqual(t, readAll(t, mem)[:64<<10], newer, "a reader after replay")
}

// TestJournalDroppedAfterTakeover: another writer took over after the
// crash; the old journal must not be replayed over its writes.
func TestJournalDroppedAfterTakeover(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	a := openDisk(t, cfg)
	st.Hook = failPuts
	mustWrite(t, a, fill(4096, 1), 0)
	crash(a)
	st.Hook = nil
	other := testConfig(t, st)
	other.Takeover = true
	b := openDisk(t, other)
	x := fill(4096, 2)
	mustWrite(t, b, x, 4096)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c := openDisk(t, cfg) // the crashed writer's journal
	got := make([]byte, 8192)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8192)
	copy(want[4096:], x)
	requireEqual(t, got, want, "after reopening with a stale journal")
}

func TestJournalDirLockedAndTornTail(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	a := openDisk(t, cfg)
	cfg2 := cfg
	cfg2.Takeover = true
	if _, err := Open(t.Context(), cfg2); err == nil || errors.Is(err, ErrInUse) {
		t.Fatalf("a second Disk on one journal directory: got %v; want a lock error", err)
	}
	st.Hook = failPuts
	x := fill(4096, 1)
	mustWrite(t, a, x, 0)
	mustWrite(t, a, fill(4096, 2), 8192)
	path := a.openSeg.jf.path
	size := a.openSeg.jf.size
	crash(a)
	st.Hook = nil
	// Tear the last record: it must be dropped, the first kept.
	if err := os.Truncate(path, size-100); err != nil {
		t.Fatal(err)
	}
	b := openDisk(t, cfg)
	got := make([]byte, 12288)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 12288)
	copy(want, x)
	requireEqual(t, got, want, "after a torn tail")
}

// TestClaimFailedAfterCrashStillResumes: the writer file is rewritten
// while the first claim is under way; a restart whose claim fails must
// leave the crashed writer's journal resumable by the next one.
func TestClaimFailedAfterCrashStillResumes(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	a := openDisk(t, cfg)
	st.Hook = failPuts
	x := fill(4096, 1)
	mustWrite(t, a, x, 0)
	crash(a)
	st.Hook = func(op Op, key string) error {
		if op == OpPut && !isProbe(key) {
			return &Permanent{Err: errInjected}
		}
		return nil
	}
	if _, err := Open(t.Context(), cfg); err == nil {
		t.Fatal("Open with every claim refused succeeded")
	}
	st.Hook = nil
	b := openDisk(t, cfg)
	got := make([]byte, 4096)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, got, x, "after a failed restart and a second one")
}

// TestScanJournalVersions: a journal file of either version scans to its
// records; a record written under another local number does not.
func TestScanJournalVersions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    journalHeader
		records journalHeader // the header the records were written under
		want    int
	}{
		{"v2", journalHeader{ID: "x", Local: 7}, journalHeader{ID: "x", Local: 7}, 2},
		{"v1", journalHeader{ID: "x", Local: 7, v1: true}, journalHeader{ID: "x", Local: 7, v1: true}, 2},
		{"v2 records of an earlier use", journalHeader{ID: "x", Local: 9}, journalHeader{ID: "x", Local: 7}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.file.encode()
			var rh [recordHeaderSize]byte
			data := []byte("journal data")
			encodeRecordHeader(&rh, tc.records, uint8(kindData), 4096, int64(len(data)), crc32c(data))
			b = append(append(b, rh[:]...), data...)
			encodeRecordHeader(&rh, tc.records, uint8(kindHole), 0, 512, 0)
			b = append(b, rh[:]...)
			s, err := scanJournalReader("test", newBytesReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if len(s.records) != tc.want {
				t.Fatalf("got %d records; want %d", len(s.records), tc.want)
			}
		})
	}
}

// TestCrashWithMoreSegmentsThanWindow: the writer sealed more segments
// than the window while the store took none; the restart's own journal
// files must not collide with the crashed writer's, which it replays.
func TestCrashWithMoreSegmentsThanWindow(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 4<<20)
	cfg := testConfig(t, st)
	a := openDisk(t, cfg)
	st.Hook = failPuts
	want := make([]byte, 4<<20)
	n := int(2*a.meta.Window) + 4
	for i := range n {
		x := fill(64<<10, uint64(i+1))
		mustWrite(t, a, x, int64(i)*64<<10) // each seals a segment
		copy(want[i*64<<10:], x)
	}
	crash(a)
	st.Hook = nil
	requireReads(t, openDisk(t, cfg), want, "after replaying more segments than the window")
}

// TestNoJournalBeforeWriterFile: Open does not wait for the journal
// directory's writer file, but no journal file of the new writer exists
// before it is durable: when it cannot be written, READs still work, the
// first WRITE fails with the error, and the directory holds no journal.
func TestNoJournalBeforeWriterFile(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	// A directory where the writer file's temporary file goes: it cannot
	// be opened for writing.
	if err := os.Mkdir(filepath.Join(cfg.JournalDir, writerFile+".tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	d := openDisk(t, cfg)
	defer d.Close()
	if _, err := d.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("ReadAt: %v; want success (reads need no journal)", err)
	}
	if _, err := d.WriteAt(fill(4096, 1), 0); err == nil {
		t.Fatal("WriteAt succeeded without a writer file")
	}
	paths, _, err := listJournals(cfg.JournalDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 0 {
		t.Fatalf("journal files %v exist without a writer file naming their epoch", paths)
	}
}
