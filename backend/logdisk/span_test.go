package logdisk

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	spanStreams = 4
	spanPiece   = 256 << 10
)

// writeInterleaved writes model as nbdcopy's four connections do: the
// image in four ranges, written at once in 256 KiB WRITEs taking turns,
// so that every segment holds the four ranges' extents interleaved.
func writeInterleaved(t *testing.T, d *Disk, model []byte) {
	t.Helper()
	part := int64(len(model)) / spanStreams
	for off := int64(0); off < part; off += spanPiece {
		for s := range int64(spanStreams) {
			o := s*part + off
			mustWrite(t, d, model[o:o+spanPiece], o)
		}
	}
}

// readStreams reads the image in four sequential streams at once, one per
// range, in 256 KiB READs, and checks every READ against model. While it
// runs it samples the blocks the cache holds or is fetching and returns
// the most seen.
func readStreams(t *testing.T, d *Disk, model []byte) int {
	t.Helper()
	part := int64(len(model)) / spanStreams
	var most atomic.Int64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			d.cache.mu.Lock()
			n := int64(d.cache.blocks.len())
			d.cache.mu.Unlock()
			if n > most.Load() {
				most.Store(n)
			}
			select {
			case <-done:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan string, spanStreams)
	for s := range int64(spanStreams) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, spanPiece)
			for off := s * part; off < (s+1)*part; off += spanPiece {
				if _, err := d.ReadAt(buf, off); err != nil {
					errs <- err.Error()
					return
				}
				if string(buf) != string(model[off:off+spanPiece]) {
					errs <- "stream " + itoa(uint64(s)) + ": data differs at " + itoa(uint64(off))
					return
				}
			}
		}()
	}
	wg.Wait()
	waitReadAhead(t, d)
	close(done)
	<-sampled
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	return int(most.Load())
}

// TestSpanFetchesServeInterleavedStreams reads back, in four sequential
// streams at once, images whose ranges were written by four writers at
// once: prefetch GETs take whole spans of segments, across the other
// ranges' extents, and every READ still returns what was written, after
// overwrites and after garbage collection moved the data, with the cache
// held to its bound.
func TestSpanFetchesServeInterleavedStreams(t *testing.T) {
	const size = 32 << 20
	tests := []struct {
		name   string
		cache  int64
		write  func(t *testing.T, d *Disk, model []byte)
		minAvg int64 // bytes per GET, if set
		maxAmp float64
	}{{
		name:   "interleaved writers",
		write:  writeInterleaved,
		minAvg: 512 << 10,
		maxAmp: 1.25,
	}, {
		name:  "interleaved writers, a cache of a sixteenth",
		cache: size / 16,
		write: writeInterleaved,
	}, {
		name: "overwritten in pieces of every size",
		write: func(t *testing.T, d *Disk, model []byte) {
			writeInterleaved(t, d, model)
			mustSync(t, d)
			overwrite(t, d, model, 200, 1)
		},
		maxAmp: 3,
	}, {
		name:  "collected: garbage collection moved the live data",
		cache: size / 16,
		write: func(t *testing.T, d *Disk, model []byte) {
			writeInterleaved(t, d, model)
			mustSync(t, d)
			overwrite(t, d, model, 500, 2)
			mustSync(t, d)
			if err := d.GC(0); err != nil {
				t.Fatalf("GC: %v", err)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := NewMemStore()
			createImage(t, st, size)
			cfg := testConfig(t, st)
			cfg.SegmentSize = 4 << 20
			w := openDisk(t, cfg)
			model := fill64(size, 7)
			tt.write(t, w, model)
			if err := w.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			rcfg := testConfig(t, st)
			rcfg.ReadOnly, rcfg.CacheSize = true, tt.cache
			d := openDisk(t, rcfg)
			most := readStreams(t, d, model)

			st1 := d.Stats()
			t.Logf("%d GETs, %d bytes (%.2f x the image), most blocks held %d", st1.Gets, st1.GetBytes,
				float64(st1.GetBytes)/size, most)
			if tt.minAvg > 0 && st1.GetBytes/max(st1.Gets, 1) < tt.minAvg {
				t.Errorf("%d GETs of %d bytes on average, want at least %d", st1.Gets, st1.GetBytes/max(st1.Gets, 1), tt.minAvg)
			}
			if tt.maxAmp > 0 && float64(st1.GetBytes) > tt.maxAmp*size {
				t.Errorf("fetched %d bytes for an image of %d, want at most %.2f x", st1.GetBytes, size, tt.maxAmp)
			}
			// The cache, prefetches in flight (half the cache) and each
			// stream's READ with its fetch units.
			limit := rcfg.cacheSize()
			bound := (limit+limit/2)/cacheBlock + spanStreams*(spanPiece+2*fetchUnit)/cacheBlock
			if int64(most) > bound {
				t.Errorf("the cache held %d blocks at once, want at most %d", most, bound)
			}
			if got := d.cache.size(); got > limit {
				t.Errorf("the cache holds %d bytes, over its limit %d", got, limit)
			}
		})
	}
}

// overwrite writes n pieces of random sizes (512 B to 1 MiB) at random
// places into d and model.
func overwrite(t *testing.T, d *Disk, model []byte, n int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 99))
	for i := range n {
		l := int64(512) << r.IntN(12)
		off := r.Int64N(int64(len(model))-l) &^ 511
		p := fill64(int(l), seed<<32|uint64(i))
		mustWrite(t, d, p, off)
		copy(model[off:], p)
	}
}

// fill64 is fill, eight bytes at a time.
func fill64(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// TestReadUnitNeighboursGoFirst: a 4 KiB READ that misses fetches its
// aligned fetch unit with one GET, and a full cache evicts those
// neighbours before any block a READ asked for, so READs that repeat stay
// cached.
func TestReadUnitNeighboursGoFirst(t *testing.T) {
	st := NewMemStore()
	model := writtenImage(t, st, 1<<20, fill64(1<<20, 3))
	cfg := readOnlyConfig(t, st)
	cfg.CacheSize = 2 * fetchUnit
	d := openDisk(t, cfg)
	read := func(off int64) {
		t.Helper()
		buf := make([]byte, 4096)
		if _, err := d.ReadAt(buf, off); err != nil {
			t.Fatalf("ReadAt %d: %v", off, err)
		}
		requireEqual(t, buf, model[off:off+4096], "read")
	}
	read(0)
	if st := d.Stats(); st.Gets != 1 || st.GetBytes != fetchUnit {
		t.Fatalf("a 4 KiB READ made %d GETs of %d bytes, want one of %d", st.Gets, st.GetBytes, fetchUnit)
	}
	read(256 << 10)
	read(512 << 10) // the cache holds two units: a third evicts
	before := d.Stats().Gets
	read(0)
	read(256 << 10)
	if got := d.Stats().Gets - before; got != 0 {
		t.Errorf("READs of blocks read before made %d GETs, want none: a fetched neighbour outlived them", got)
	}
	if got := d.cache.size(); got > cfg.CacheSize {
		t.Errorf("the cache holds %d bytes, over its limit %d", got, cfg.CacheSize)
	}
}
