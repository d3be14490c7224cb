package logdisk

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"
)

// readAheadImage writes want in 256 KiB writes (as nbdcopy does) into a new image on a
// MemStore and returns a fresh read-only Disk on it.
func readAheadImage(t *testing.T, want []byte) *Disk {
	t.Helper()
	st := NewMemStore()
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
		name   string
		reads  func(yield func(off, n int64))
		minGet int64
		maxGet int64
		minAvg int64 // bytes per GET
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
		minGet: 4<<20 + 8<<20,
		maxGet: 4<<20 + 2*(16<<20) + 2*cacheBlock,
		minAvg: 1 << 20,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := readAheadImage(t, want)
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
		})
	}
}
