package backend

import (
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
)

func TestMemoryExtents(t *testing.T) {
	const size = 8 * chunkSize
	tests := []struct {
		name   string
		setup  func(m *Memory)
		off, n int64
		want   []Extent
	}{
		{"fresh", func(*Memory) {}, 0, size, []Extent{{0, size, hz}}},
		{"one byte allocates its chunk", func(m *Memory) { m.WriteAt([]byte{1}, chunkSize+5) }, 0, size,
			[]Extent{{0, chunkSize, hz}, {chunkSize, chunkSize, 0}, {2 * chunkSize, 6 * chunkSize, hz}}},
		{"neighbours merge", func(m *Memory) { m.WriteAt(make([]byte, 2*chunkSize), chunkSize) }, 0, size,
			[]Extent{{0, chunkSize, hz}, {chunkSize, 2 * chunkSize, 0}, {3 * chunkSize, 5 * chunkSize, hz}}},
		{"trim drops whole chunk", func(m *Memory) {
			m.WriteAt(make([]byte, 3*chunkSize), 0)
			m.Trim(chunkSize, chunkSize)
		}, 0, size, []Extent{{0, chunkSize, 0}, {chunkSize, chunkSize, hz}, {2 * chunkSize, chunkSize, 0}, {3 * chunkSize, 5 * chunkSize, hz}}},
		{"partial trim keeps chunk", func(m *Memory) {
			m.WriteAt([]byte{1}, 0)
			m.Trim(0, chunkSize-1)
		}, 0, 2 * chunkSize, []Extent{{0, chunkSize, 0}, {chunkSize, chunkSize, hz}}},
		{"zero no-hole keeps chunk", func(m *Memory) {
			m.WriteAt([]byte{1}, 0)
			m.WriteZeroes(0, chunkSize, true, true)
		}, 0, 2 * chunkSize, []Extent{{0, chunkSize, 0}, {chunkSize, chunkSize, hz}}},
		{"zero may punch", func(m *Memory) {
			m.WriteAt([]byte{1}, 0)
			m.WriteZeroes(0, chunkSize, false, true)
		}, 0, 2 * chunkSize, []Extent{{0, 2 * chunkSize, hz}}},
		{"unaligned query is clipped", func(m *Memory) { m.WriteAt([]byte{1}, 0) }, 10, 2 * chunkSize,
			[]Extent{{10, chunkSize - 10, 0}, {chunkSize, chunkSize + 10, hz}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMemory(size)
			tt.setup(m)
			require.Equal(t, tt.want, collectExtents(t, m, tt.off, tt.n))
		})
	}
}

func TestExtentsStop(t *testing.T) {
	m := NewMemory(4 * chunkSize)
	m.WriteAt([]byte{1}, chunkSize)
	calls := 0
	require.NoError(t, m.Extents(0, 4*chunkSize, func(Extent) bool { calls++; return false }))
	require.Equal(t, 1, calls, "got calls after fn returned false")
}

// TestMemoryHuge checks that a huge export costs nothing until written and
// that the tree handles offsets far beyond 4 GiB. (Sizes up to 1<<63-1
// work too, but their directory, one pointer per TiB, takes 64 MiB.)
func TestMemoryHuge(t *testing.T) {
	for _, size := range []int64{1 << 40, 1<<50 + 12345} {
		m := NewMemory(size)
		require.Equal(t, []Extent{{0, size, hz}}, collectExtents(t, m, 0, size))
		off := size - 3
		_, err := m.WriteAt([]byte{1, 2, 3}, off)
		require.NoError(t, err)
		got := make([]byte, 4)
		_, err = m.ReadAt(got, off-1)
		require.NoError(t, err)
		require.Equal(t, []byte{0, 1, 2, 3}, got)
		ext := collectExtents(t, m, 0, size)
		require.Len(t, ext, 2)
		require.Equal(t, Extent{Offset: 0, Length: (off >> chunkShift) << chunkShift, Flags: hz}, ext[0])
		require.Equal(t, size, ext[1].Offset+ext[1].Length)
		_, err = m.WriteAt([]byte{1}, size)
		require.ErrorIs(t, err, ErrOutOfRange)
	}
}

// TestMemoryZeroHuge trims and zeroes a whole 1 PiB export with a few
// written chunks, far apart: only what was written may cost anything (a
// walk over every 64 KiB chunk would take minutes), and the written data
// must go.
func TestMemoryZeroHuge(t *testing.T) {
	const size = 1 << 50
	offs := []int64{0, 1<<40 + 5, size - 1}
	for _, drop := range []bool{true, false} {
		m := NewMemory(size)
		for _, off := range offs {
			_, err := m.WriteAt([]byte{1}, off)
			require.NoError(t, err)
		}
		done := make(chan error, 1)
		go func() { done <- m.WriteZeroes(0, size, !drop, true) }()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("zeroing a 1 PiB export with 3 chunks written took over 5 s")
		}
		for _, off := range offs {
			got := []byte{9}
			_, err := m.ReadAt(got, off)
			require.NoError(t, err)
			require.Equal(t, []byte{0}, got, "byte at %d after zeroing (drop %t)", off, drop)
		}
		if drop {
			require.Equal(t, []Extent{{0, size, hz}}, collectExtents(t, m, 0, size))
		}
	}
}

func TestMemoryEmpty(t *testing.T) {
	for _, m := range []*Memory{NewMemory(0), NewMemory(-5), new(Memory)} {
		n, err := m.WriteAt(nil, 0)
		require.NoError(t, err)
		require.Zero(t, n)
		_, err = m.WriteAt([]byte{1}, 0)
		require.ErrorIs(t, err, ErrOutOfRange)
		require.Empty(t, collectExtents(t, m, 0, 0))
	}
}

// TestMemoryNoAllocs checks that the hot path allocates nothing once the
// chunks exist, so nbdcopy and fio at GB/s do not drive the GC.
func TestMemoryNoAllocs(t *testing.T) {
	m := NewMemory(4 << 20)
	p := make([]byte, 1<<20)
	_, err := m.WriteAt(p, 100)
	require.NoError(t, err)
	for _, n := range []int{4096, 1 << 20} {
		require.Zero(t, testing.AllocsPerRun(100, func() { m.WriteAt(p[:n], 100) }), "WriteAt %d", n)
		require.Zero(t, testing.AllocsPerRun(100, func() { m.ReadAt(p[:n], 100) }), "ReadAt %d", n)
		require.Zero(t, testing.AllocsPerRun(100, func() { m.ReadAt(p[:n], 3<<20) }), "ReadAt %d of holes", n)
	}
}

func benchmarkMemory(b *testing.B, n int, write bool) {
	const size = 64 << 20
	m := NewMemory(size)
	p := randBytes(n, 1)
	for off := int64(0); off < size; off += int64(n) {
		m.WriteAt(p, off)
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	off := int64(0)
	for b.Loop() {
		if write {
			m.WriteAt(p, off)
		} else {
			m.ReadAt(p, off)
		}
		off = (off + int64(n)) % size
	}
}

func BenchmarkMemoryReadAt4K(b *testing.B)  { benchmarkMemory(b, 4<<10, false) }
func BenchmarkMemoryReadAt1M(b *testing.B)  { benchmarkMemory(b, 1<<20, false) }
func BenchmarkMemoryWriteAt4K(b *testing.B) { benchmarkMemory(b, 4<<10, true) }
func BenchmarkMemoryWriteAt1M(b *testing.B) { benchmarkMemory(b, 1<<20, true) }

// BenchmarkMemoryParallelReadAt4K measures contention: requests to
// different chunks share no lock.
func BenchmarkMemoryParallelReadAt4K(b *testing.B) {
	m := NewMemory(64 << 20)
	m.WriteAt(make([]byte, 64<<20), 0)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, 4096)
		off := int64(0)
		for pb.Next() {
			m.ReadAt(p, off)
			off = (off + 1<<20) % (64 << 20)
		}
	})
}

// TestSlotLayout checks the layout the request path counts on: a chunk's
// lock and pointer in 32 bytes, two slots to a 64-byte cache line and
// none across two (the tables are page-aligned).
func TestSlotLayout(t *testing.T) {
	require.EqualValues(t, 32, unsafe.Sizeof(slot{}))
	require.EqualValues(t, 32*tableSize, unsafe.Sizeof(leafTable{}))
}

// BenchmarkMemoryRandomWrite4K writes 4 KiB at random aligned offsets of
// a written 1 GiB export, as fio's random writes do: each lands on a
// cold chunk and page, so it measures the cache and TLB misses a write
// costs beyond its copy.
func BenchmarkMemoryRandomWrite4K(b *testing.B) {
	const size = 1 << 30
	m := NewMemory(size)
	fill := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(fill)) {
		m.WriteAt(fill, off)
	}
	p := randBytes(4096, 1)
	b.SetBytes(4096)
	b.ReportAllocs()
	x := uint64(88172645463325252)
	for b.Loop() {
		x ^= x << 13 // xorshift64: no two runs of the loop pick alike
		x ^= x >> 7
		x ^= x << 17
		m.WriteAt(p, int64(x%(size/4096))*4096)
	}
}
