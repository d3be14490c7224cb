package logdisk

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

// readAheadImage writes want in 256 KiB writes (as nbdcopy does) into a new image on a
// MemStore and returns a fresh read-only Disk on it.
func readAheadImage(t *testing.T, want []byte) *Disk {
	t.Helper()
	return readAheadImageOn(t, NewMemStore(), want)
}

// readAheadImageOn is readAheadImage on st, in 16 MiB segments.
func readAheadImageOn(t *testing.T, st Store, want []byte) *Disk {
	t.Helper()
	size := int64(len(want))
	createImage(t, st, size)
	cfg := testConfig(t, st)
	cfg.SegmentSize = 16 << 20
	w := openDisk(t, cfg)
	for off := int64(0); off < size; off += 256 << 10 {
		mustWrite(t, w, want[off:off+256<<10], off)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rcfg := testConfig(t, st)
	rcfg.ReadOnly = true
	return openDisk(t, rcfg)
}

// waitReadAhead waits until no prefetch runs.
func waitReadAhead(t *testing.T, d *Disk) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		d.ra.mu.Lock()
		running := d.ra.inFlight
		d.ra.mu.Unlock()
		if running == 0 {
			return
		}
	}
	t.Fatal("read-ahead still running after 10 s")
}

func TestReadAheadOnlyForSequentialReaders(t *testing.T) {
	const size = 64 << 20
	want := make([]byte, size)
	for i := range size / 8 {
		binary.LittleEndian.PutUint64(want[i*8:], uint64(i)*0x9e3779b97f4a7c15)
	}
	tests := []struct {
		name     string
		reads    func(yield func(off, n int64))
		minGet   int64
		maxGet   int64
		minAvg   int64 // bytes per GET
		minWhole int   // GETs of whole segment objects
	}{{
		name: "random 4 KiB reads fetch only their fetch units",
		reads: func(yield func(off, n int64)) {
			r := rand.New(rand.NewPCG(1, 2))
			for range 500 {
				yield(r.Int64N(size/4096)*4096, 4096)
			}
		},
		maxGet: 500 * fetchUnit,
	}, {
		name: "sequential 256 KiB reads fetch a window ahead",
		reads: func(yield func(off, n int64)) {
			for off := int64(0); off < 4<<20; off += 256 << 10 {
				yield(off, 256<<10)
			}
		},
		minGet:   4<<20 + 8<<20,
		maxGet:   4<<20 + 2*(16<<20) + 2*cacheBlock,
		minAvg:   1 << 20,
		minWhole: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := NewMemStore()
			d := readAheadImageOn(t, ms, want)
			tt.reads(func(off, n int64) {
				buf := make([]byte, n)
				if _, err := d.ReadAt(buf, off); err != nil {
					t.Fatalf("ReadAt %d+%d: %v", off, n, err)
				}
				requireEqual(t, buf, want[off:off+n], "read")
			})
			waitReadAhead(t, d)
			st := d.Stats()
			if st.GetBytes < tt.minGet || st.GetBytes > tt.maxGet {
				t.Errorf("GET bytes %d, want %d to %d", st.GetBytes, tt.minGet, tt.maxGet)
			}
			if avg := st.GetBytes / max(st.Gets, 1); avg < tt.minAvg {
				t.Errorf("%d GETs of %d bytes on average, want at least %d", st.Gets, avg, tt.minAvg)
			}
			if whole := ms.WholeGets(); whole < tt.minWhole || tt.minWhole == 0 && whole > 0 {
				t.Errorf("%d GETs of whole segments, want at least %d (none if 0)", whole, tt.minWhole)
			}
		})
	}
}

// seqPattern returns size bytes that differ in every 8.
func seqPattern(size int) []byte {
	want := make([]byte, size)
	for i := range size / 8 {
		binary.LittleEndian.PutUint64(want[i*8:], uint64(i)*0x9e3779b97f4a7c15+1)
	}
	return want
}

// readSeq reads the image from 0 to len(want) in 256 KiB READs and
// returns how many failed; every READ that succeeds must return want.
func readSeq(t *testing.T, d *Disk, want []byte) (failed int) {
	t.Helper()
	buf := make([]byte, 256<<10)
	for off := 0; off < len(want); off += len(buf) {
		if _, err := d.ReadAt(buf, int64(off)); err != nil {
			failed++
			continue
		}
		requireEqual(t, buf, want[off:off+len(buf)], "read")
	}
	return failed
}

// TestReadAheadFetchesWholeSegments reads an image of four 16 MiB
// segments sequentially: the read-ahead fetches each segment it reaches
// first with one GET of the whole object, and no byte twice.
func TestReadAheadFetchesWholeSegments(t *testing.T) {
	const size = 64 << 20
	want := seqPattern(size)
	st := NewMemStore()
	d := readAheadImageOn(t, st, want)
	if n := len(d.segs); n != 4 {
		t.Fatalf("%d segments, want 4", n)
	}
	if failed := readSeq(t, d, want); failed > 0 {
		t.Fatalf("%d READs failed", failed)
	}
	waitReadAhead(t, d)
	// The first segment's first MiB is read before the stream counts as
	// sequential, with 256 KiB GETs, so that segment goes in chunks.
	if whole := st.WholeGets(); whole != 3 {
		t.Errorf("%d GETs of whole segments, want 3", whole)
	}
	if got := d.Stats().GetBytes; got > size+1<<20 {
		t.Errorf("%d bytes fetched for %d read", got, size)
	}
}

// cutStore is a MemStore whose whole-object GETs fail as a test asks:
// with a body cut short, its end left as zeros ("short"), or with a
// transient error once ("error").
type cutStore struct {
	*MemStore
	mode string
	cut  atomic.Int64 // whole GETs answered with the fault
}

func (s *cutStore) ReadWholev(ctx context.Context, key string, bufs [][]byte) (int, error) {
	n, err := s.MemStore.ReadWholev(ctx, key, bufs)
	if err != nil {
		return n, err
	}
	switch {
	case s.mode == "short":
		s.cut.Add(1)
		half := n / 2
		for _, b := range bufs {
			k := min(len(b), half)
			clear(b[k:])
			half -= k
		}
		return n / 2, nil
	case s.mode == "error" && s.cut.Add(1) == 1:
		return n / 2, io.ErrUnexpectedEOF
	}
	return n, nil
}

// TestReadAheadWholeFaults checks that a whole-segment GET whose body
// came short is an error, never zeros: the READs waiting for its blocks
// fail and later ones fetch them again; a transient error is retried.
func TestReadAheadWholeFaults(t *testing.T) {
	const size = 64 << 20
	want := seqPattern(size)
	for _, mode := range []string{"short", "error"} {
		t.Run(mode, func(t *testing.T) {
			st := &cutStore{MemStore: NewMemStore(), mode: mode}
			d := readAheadImageOn(t, st, want)
			failed := readSeq(t, d, want)
			waitReadAhead(t, d)
			if st.cut.Load() == 0 {
				t.Fatal("no whole-segment GET was made")
			}
			if mode == "error" && failed > 0 {
				t.Errorf("%d READs failed; the retry should have read the segment", failed)
			}
			key := d.key(logDir, d.segs[maxSeq(d)].seq)
			obj, _ := st.Object(key)
			err := d.getWhole(st, key, [][]byte{make([]byte, len(obj))})
			if mode == "short" && !errors.Is(err, errCorrupt) {
				t.Errorf("a whole GET cut short: %v, want a corrupt-object error", err)
			}
			if mode == "error" && err != nil {
				t.Errorf("a whole GET after the transient error: %v", err)
			}
		})
	}
}

// maxSeq returns the highest segment number of d.
func maxSeq(d *Disk) uint64 {
	var m uint64
	for seq := range d.segs {
		m = max(m, seq)
	}
	return m
}
