package logdisk

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkExtMapSetRandom is the map update of a random 4 KiB WRITE into
// a 1 GiB export that already holds 100,000 extents.
func BenchmarkExtMapSetRandom(b *testing.B) {
	const blocks = 1 << 18 // 4 KiB blocks in 1 GiB
	r := rand.New(rand.NewPCG(1, 1))
	var m extMap
	set := func(i int) {
		off := r.Int64N(blocks) * 4096
		m.set(mapping{off: off, len: 4096, seg: uint64(i), dataOff: int64(i) * 4128, kind: kindData, whole: true}, nil)
	}
	for i := range 100_000 {
		set(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		set(100_000 + i)
	}
}
