package logdisk

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
)

func TestWriteFlushReopen(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	d := openDisk(t, testConfig(t, st))
	data := fill(200<<10, 1)
	mustWrite(t, d, data, 4096)
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, got, data, "read back from the journal")
	mustSync(t, d)
	want := make([]byte, 1<<20)
	copy(want[4096:], data)
	requireEqual(t, readAll(t, st), want, "a fresh reader after FLUSH")
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Closed cleanly: a new writer needs no takeover and sees the data.
	d2 := openDisk(t, testConfig(t, st))
	got = make([]byte, 1<<20)
	if _, err := d2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, got, want, "a new writer after Close")
}

// TestModel runs random writes, trims, zeroes, flushes and reopenings
// against a byte-slice model.
func TestModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		st := NewMemStore()
		const size = 1 << 20
		createImage(t, st, size)
		cfg := testConfig(t, st)
		cfg.CheckpointEvery = 3
		d := openDisk(t, cfg)
		model := make([]byte, size)
		allocated := make([]bool, size)
		r := rand.New(rand.NewPCG(seed, 9))
		for i := 0; i < 300; i++ {
			off := r.Int64N(size)
			n := 1 + r.Int64N(min(size-off, 40000))
			switch op := r.IntN(10); {
			case op < 6:
				p := fill(int(n), uint64(i)+seed*1000)
				mustWrite(t, d, p, off)
				copy(model[off:], p)
				for j := off; j < off+n; j++ {
					allocated[j] = true
				}
			case op == 6:
				if err := d.Trim(off, n); err != nil {
					t.Fatal(err)
				}
				clear(model[off : off+n])
				for j := off; j < off+n; j++ {
					allocated[j] = false
				}
			case op == 7:
				if err := d.WriteZeroes(off, n, r.IntN(2) == 0, false); err != nil {
					t.Fatal(err)
				}
				clear(model[off : off+n])
			case op == 8:
				mustSync(t, d)
			default:
				got := make([]byte, n)
				if _, err := d.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				requireEqual(t, got, model[off:off+n], "read")
			}
			if i%100 == 99 {
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}
				d = openDisk(t, cfg)
			}
		}
		mustSync(t, d)
		requireEqual(t, readAll(t, st), model, "final image")
		checkExtents(t, d, allocated)
	}
}

// checkExtents checks that every byte reported as data is allocated in
// the model (writes and zeroes may also be data; holes must be trimmed or
// unwritten).
func checkExtents(t *testing.T, d *Disk, allocated []bool) {
	t.Helper()
	pos := int64(0)
	err := d.Extents(0, int64(len(allocated)), func(e backend.Extent) bool {
		if e.Offset != pos {
			t.Fatalf("extent at %d; want %d", e.Offset, pos)
		}
		if e.Flags == 0 {
			for j := e.Offset; j < e.Offset+e.Length; j++ {
				if !allocated[j] {
					t.Fatalf("byte %d reported as data but was never written or was trimmed", j)
				}
			}
		}
		pos += e.Length
		return true
	})
	if err != nil || pos != int64(len(allocated)) {
		t.Fatalf("Extents covered %d bytes, err %v", pos, err)
	}
}

func TestReadOnlyNeverWrites(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	d := openDisk(t, testConfig(t, st))
	mustWrite(t, d, fill(4096, 1), 0)
	mustSync(t, d)
	st.Hook = func(op Op, key string) error {
		if op == OpPut || op == OpDelete {
			t.Errorf("read-only Disk did %s %s", op, key)
		}
		return nil
	}
	cfg := testConfig(t, st)
	cfg.ReadOnly = true
	ro := openDisk(t, cfg)
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, backend.ErrReadOnly) {
		t.Fatalf("write to read-only: got %v; want ErrReadOnly", err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCheckpointBoundsOpen(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 4<<20)
	cfg := testConfig(t, st)
	cfg.CheckpointEvery = 4
	d := openDisk(t, cfg)
	for i := range 20 {
		mustWrite(t, d, fill(4096, uint64(i)), int64(i)*8192)
		mustSync(t, d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.Info().Checkpoint < 16 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c := d.Info().Checkpoint; c < 16 {
		t.Fatalf("latest checkpoint %d after 20 flushed segments; want at least 16", c)
	}
	in := d.Info()
	_, gets0 := st.Requests()
	ro := cfg
	ro.ReadOnly = true
	openDisk(t, ro)
	_, gets1 := st.Requests()
	// meta, the checkpoint, and one header per log object after it.
	if n, want := gets1-gets0, 2+int(in.LastSeq-in.Checkpoint); n > want {
		t.Fatalf("opening took %d GETs; want at most %d", n, want)
	}
}

func TestProbeRefusesStoreWithoutConditionalPut(t *testing.T) {
	st := &overwritingStore{NewMemStore()}
	createImage(t, st, 1<<20)
	_, err := Open(context.Background(), testConfig(t, st))
	if !errors.Is(err, ErrNoConditionalPut) {
		t.Fatalf("Open: got %v; want ErrNoConditionalPut", err)
	}
	cfg := testConfig(t, st)
	cfg.ReadOnly = true
	openDisk(t, cfg) // read-only needs no conditional writes
}

// overwritingStore ignores put-if-absent, as some S3 servers do.
type overwritingStore struct{ *MemStore }

func (s *overwritingStore) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	s.MemStore.mu.Lock()
	delete(s.MemStore.objects, key)
	s.MemStore.mu.Unlock()
	return s.MemStore.PutIfAbsent(ctx, key, body, size)
}

func TestFlushFailsWhileStoreDownThenRecovers(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	cfg := testConfig(t, st)
	cfg.FlushTimeout = 300 * time.Millisecond
	d := openDisk(t, cfg)
	first := fill(8192, 1)
	mustWrite(t, d, first, 0)
	mustSync(t, d)
	var down = true
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	st.Hook = func(op Op, key string) error {
		<-mu
		defer func() { mu <- struct{}{} }()
		if down {
			return errInjected
		}
		return nil
	}
	second := fill(8192, 2)
	mustWrite(t, d, second, 8192)
	if err := d.Sync(); !errors.Is(err, ErrFlushTimeout) {
		t.Fatalf("Sync with the store down: got %v; want ErrFlushTimeout", err)
	}
	<-mu
	down = false
	mu <- struct{}{}
	cfg.FlushTimeout = 10 * time.Second
	d.cfg.FlushTimeout = 10 * time.Second
	mustSync(t, d)
	want := make([]byte, 1<<20)
	copy(want, first)
	copy(want[8192:], second)
	requireEqual(t, readAll(t, st), want, "after the store came back")
}

func TestDirtyLimitBlocksWrites(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 8<<20)
	cfg := testConfig(t, st)
	cfg.DirtyLimit = 256 << 10
	d := openDisk(t, cfg)
	release := make(chan struct{})
	st.Hook = func(op Op, key string) error {
		if op == OpPut {
			<-release
		}
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 16 {
			mustWrite(t, d, fill(64<<10, uint64(i)), int64(i)*(64<<10))
		}
	}()
	select {
	case <-done:
		t.Fatal("1 MiB of writes went through with a 256 KiB dirty limit and uploads held")
	case <-time.After(200 * time.Millisecond):
	}
	d.mu.Lock()
	dirty := d.dirty
	d.mu.Unlock()
	if dirty > cfg.DirtyLimit+(64<<10)+4096 {
		t.Fatalf("dirty %d bytes; limit %d", dirty, cfg.DirtyLimit)
	}
	close(release)
	<-done
	mustSync(t, d)
}

// TestProbeNotTakenOnTrust: the probe's object stays, so a later open
// sends one conditional PUT of it; a store that then lets that PUT
// overwrite it is refused, though it once refused.
func TestProbeNotTakenOnTrust(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	var probes atomic.Int32
	st.Hook = func(op Op, key string) error {
		if op == OpPut && isProbe(key) {
			probes.Add(1)
		}
		return nil
	}
	for i, want := range []int32{2, 1} { // the first open creates the object
		probes.Store(0)
		d := openDisk(t, testConfig(t, st))
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if got := probes.Load(); got != want {
			t.Fatalf("open %d: %d probe PUTs; want %d", i+1, got, want)
		}
	}
	if _, ok := st.Object(testPrefix + probeKey); !ok {
		t.Fatal("the probe's object is gone after a clean close")
	}
	_, err := Open(context.Background(), testConfig(t, &overwritingStore{st}))
	if !errors.Is(err, ErrNoConditionalPut) {
		t.Fatalf("Open on a store that now overwrites: %v; want ErrNoConditionalPut", err)
	}
}

// TestProbeLeavesNothingWithoutImage: a writable open of a prefix with
// no image there leaves no probe object behind.
func TestProbeLeavesNothingWithoutImage(t *testing.T) {
	st := NewMemStore()
	if _, err := Open(context.Background(), testConfig(t, st)); !errors.Is(err, ErrNoImage) {
		t.Fatalf("Open: %v; want ErrNoImage", err)
	}
	if n, _ := st.Bytes(""); n != 0 {
		t.Fatalf("%d objects left in the store; want none", n)
	}
}
