package logdisk

import (
	"testing"

	"github.com/nbdd/nbdd/backend"
)

// cachedImage is a read-only Disk over a 16 MiB image written in 64 KiB
// pieces, every block of it in the read cache.
func cachedImage(b *testing.B) *Disk {
	st := NewMemStore()
	createImage(b, st, 16<<20)
	cfg := testConfig(b, st)
	w := openDisk(b, cfg)
	for off := int64(0); off < 16<<20; off += 64 << 10 {
		mustWrite(b, w, fill(64<<10, uint64(off)), off)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	cfg.ReadOnly = true
	r := openDisk(b, cfg)
	buf := make([]byte, 16<<20)
	if _, err := r.ReadAt(buf, 0); err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkReadCached is the request path of a 64 KiB READ whose data is
// in the read cache: the map, the cache and the copy, without the store.
func BenchmarkReadCached(b *testing.B) {
	r := cachedImage(b)
	p := make([]byte, 64<<10)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := r.ReadAt(p, int64(i%256)*(64<<10)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExtentsWhole is block status over the whole 16 MiB image.
func BenchmarkExtentsWhole(b *testing.B) {
	r := cachedImage(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Extents(0, 16<<20, func(backend.Extent) bool { return true }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadMiss is a 4 KiB READ that misses the read cache: the
// miss path (the cache's registrations, the fetch unit's one GET on a GET
// worker, the fill and the copy) over a store in memory, so allocs/op
// are the engine's plus the memory store's one buffer per GET.
func BenchmarkReadMiss(b *testing.B) {
	const size = 64 << 20
	st := NewMemStore()
	createImage(b, st, size)
	cfg := testConfig(b, st)
	cfg.SegmentSize = 16 << 20
	w := openDisk(b, cfg)
	for off := int64(0); off < size; off += 1 << 20 {
		mustWrite(b, w, fill(1<<20, uint64(off)), off)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	cfg.ReadOnly = true
	cfg.CacheSize = 1 << 20 // a sixty-fourth of the image: every READ below misses
	cfg.ReadAhead = -1
	r := openDisk(b, cfg)
	p := make([]byte, 4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := int64(i) * (fetchUnit + 4096) % size &^ 4095
		if _, err := r.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	if _, gets := st.Requests(); gets < b.N {
		b.Fatalf("%d GETs for %d READs: some hit the cache", gets, b.N)
	}
}
