package logdisk

import (
	"math/rand/v2"
	"testing"
)

// modelMap is a byte-per-byte model of an extMap: for each byte, the
// entry that covers it (seg and data position), or none.
type modelByte struct {
	kind    extKind
	seg     uint64
	dataPos int64
}

func checkAgainstModel(t *testing.T, m *extMap, model []modelByte) {
	t.Helper()
	got := make([]modelByte, len(model))
	prevEnd := int64(-1)
	count := 0
	m.all(func(e mapping) {
		count++
		if e.off < prevEnd || e.len <= 0 {
			t.Fatalf("entry %+v overlaps or is empty (previous end %d)", e, prevEnd)
		}
		prevEnd = e.end()
		for i := int64(0); i < e.len; i++ {
			b := modelByte{kind: e.kind}
			if e.kind == kindData {
				b.seg, b.dataPos = e.seg, e.dataOff+i
			}
			got[e.off+i] = b
		}
	})
	if count != m.n {
		t.Fatalf("map counts %d entries; holds %d", m.n, count)
	}
	for i := range model {
		if got[i] != model[i] {
			t.Fatalf("byte %d: got %+v; want %+v", i, got[i], model[i])
		}
	}
}

func TestExtMapRandom(t *testing.T) {
	const size = 1 << 14
	for _, seed := range []uint64{1, 2, 3} {
		r := rand.New(rand.NewPCG(seed, 0))
		var m extMap
		model := make([]modelByte, size)
		live := map[uint64]int64{}
		for i := 0; i < 4000; i++ {
			off := r.Int64N(size)
			n := 1 + r.Int64N(min(size-off, 1+r.Int64N(700)))
			e := mapping{off: off, len: n, kind: extKind(1 + r.IntN(3))}
			if e.kind == kindData {
				e.seg, e.dataOff = uint64(1+r.IntN(5)), r.Int64N(1<<20)
				if r.IntN(3) == 0 { // continue the previous write, to merge
					e.seg, e.dataOff = 9, int64(i)*1000
				}
				live[e.seg] += n
			}
			m.set(e, func(x mapping) { live[x.seg] -= x.len })
			for j := int64(0); j < n; j++ {
				b := modelByte{kind: e.kind}
				if e.kind == kindData {
					b.seg, b.dataPos = e.seg, e.dataOff+j
				}
				model[off+j] = b
			}
		}
		checkAgainstModel(t, &m, model)
		want := map[uint64]int64{}
		for _, b := range model {
			if b.kind == kindData {
				want[b.seg]++
			}
		}
		for seg, n := range live {
			if want[seg] != n {
				t.Fatalf("live bytes of seg %d: got %d; want %d", seg, n, want[seg])
			}
		}
	}
}

func TestExtMapEachClips(t *testing.T) {
	var m extMap
	m.set(mapping{off: 100, len: 100, kind: kindData, seg: 1, dataOff: 1000, whole: true}, nil)
	m.set(mapping{off: 300, len: 50, kind: kindHole}, nil)
	var got []mapping
	m.each(150, 320, func(e mapping) bool { got = append(got, e); return true })
	want := []mapping{
		{off: 150, len: 50, kind: kindData, seg: 1, dataOff: 1050},
		{off: 300, len: 20, kind: kindHole},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v; want %+v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("entry %d: got %+v; want %+v", i, got[i], want[i])
		}
	}
}

func TestExtMapMergesSequentialWrites(t *testing.T) {
	var m extMap
	for i := int64(0); i < 1000; i++ {
		m.set(mapping{off: i * 4096, len: 4096, kind: kindData, seg: 1, dataOff: i * 4096}, nil)
	}
	if m.n != 1 {
		t.Fatalf("contiguous writes left %d entries; want 1", m.n)
	}
}

func BenchmarkExtMapRandom4K(b *testing.B) {
	var m extMap
	r := rand.New(rand.NewPCG(1, 2))
	const blocks = 1 << 18 // a 1 GiB export in 4 KiB blocks
	i := int64(0)
	for b.Loop() {
		off := r.Int64N(blocks) * 4096
		m.set(mapping{off: off, len: 4096, kind: kindData, seg: 1, dataOff: i}, nil)
		i += 8192
	}
}
