package backend

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMemoryPreallocate checks that a preallocated export takes its chunks
// from the free list, still reads and reports unwritten space as a hole,
// and gets trimmed chunks back cleared.
func TestMemoryPreallocate(t *testing.T) {
	const size = 4*chunkSize + 100 // the partial last chunk counts too
	m := NewMemory(size)
	require.NoError(t, m.Preallocate())
	free := func() int { m.chunks.mu.Lock(); defer m.chunks.mu.Unlock(); return len(m.chunks.free) }
	require.Equal(t, 5, free(), "chunks on the free list after Preallocate")
	require.Equal(t, []Extent{{0, size, hz}}, collectExtents(t, m, 0, size), "a preallocated export is still all hole")

	data := bytes.Repeat([]byte{0xab}, chunkSize)
	_, err := m.WriteAt(data, chunkSize)
	require.NoError(t, err)
	require.Equal(t, 4, free(), "a first write takes its chunk from the free list")
	require.Equal(t, []Extent{{0, chunkSize, hz}, {chunkSize, chunkSize, 0}, {2 * chunkSize, size - 2*chunkSize, hz}},
		collectExtents(t, m, 0, size))

	require.NoError(t, m.Trim(chunkSize, chunkSize))
	require.Equal(t, 5, free(), "Trim gives the whole chunk back")
	// The chunk comes back cleared: a small write into it leaves the rest zero.
	_, err = m.WriteAt([]byte{1}, 3*chunkSize)
	require.NoError(t, err)
	got := make([]byte, chunkSize)
	_, err = m.ReadAt(got, 3*chunkSize)
	require.NoError(t, err)
	want := make([]byte, chunkSize)
	want[0] = 1
	require.Equal(t, want, got, "a reused chunk reads as zeroes beyond what was written")

	// Past the free list, chunks are allocated as without preallocation.
	_, err = m.WriteAt(make([]byte, size), 0)
	require.NoError(t, err)
	require.Equal(t, 0, free())
}

// TestMemoryPreallocateTooBig checks that an export larger than the
// machine's memory is refused, not allocated until the program dies.
func TestMemoryPreallocateTooBig(t *testing.T) {
	m := NewMemory(1 << 50)
	err := m.Preallocate()
	require.ErrorContains(t, err, "more than the machine's")
	require.Empty(t, m.chunks.free)
}

// BenchmarkMemoryFirstWrite writes 64 MiB in 256 KiB pieces into a fresh
// export, sparse or preallocated (the preallocation is not timed): what a
// first fill costs the server apart from the network.
func BenchmarkMemoryFirstWrite(b *testing.B) {
	const size, piece = 64 << 20, 256 << 10
	src := bytes.Repeat([]byte{0x5a}, piece)
	for _, prealloc := range []bool{false, true} {
		name := map[bool]string{false: "sparse", true: "prealloc"}[prealloc]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				m := NewMemory(size)
				if prealloc {
					require.NoError(b, m.Preallocate())
				}
				b.StartTimer()
				for off := int64(0); off < size; off += piece {
					m.WriteAt(src, off)
				}
			}
		})
	}
}
