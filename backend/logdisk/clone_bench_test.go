package logdisk

import "testing"

// BenchmarkReadCachedClone is BenchmarkReadCached through a clone that
// never wrote: every READ goes through to the base's cache.
func BenchmarkReadCachedClone(b *testing.B) {
	st := NewMemStore()
	bcfg := withPrefix(testConfig(b, st), basePrefix)
	if err := Create(b.Context(), bcfg, 16<<20); err != nil {
		b.Fatal(err)
	}
	w := openDisk(b, bcfg)
	for off := int64(0); off < 16<<20; off += 64 << 10 {
		mustWrite(b, w, fill(64<<10, uint64(off)), off)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	if _, err := Snapshot(b.Context(), bcfg, "s1"); err != nil {
		b.Fatal(err)
	}
	cfg := withPrefix(testConfig(b, st), clonePrefix)
	if err := CreateClone(b.Context(), cfg, Ref{Bucket: "b", Prefix: "base", Snapshot: "s1"}, "c"); err != nil {
		b.Fatal(err)
	}
	cfg.ReadOnly = true
	c := openDisk(b, cfg)
	buf := make([]byte, 16<<20)
	if _, err := c.ReadAt(buf, 0); err != nil {
		b.Fatal(err)
	}
	p := make([]byte, 64<<10)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := c.ReadAt(p, int64(i%256)*(64<<10)); err != nil {
			b.Fatal(err)
		}
	}
}
