package backend

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// testSize is the size of the exports in the shared tests: a few chunks
// plus a ragged tail, so that ranges cross chunk, page and block edges.
const testSize = 3*chunkSize + 12345

// tempImage creates a sparse image file of size bytes.
func tempImage(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	return path
}

// randBytes returns n bytes of deterministic pseudo-random data.
func randBytes(n int, seed uint64) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

// readAll reads the whole export.
func readAll(t *testing.T, b Backend) []byte {
	t.Helper()
	size, err := b.Size()
	require.NoError(t, err)
	got := make([]byte, size)
	n, err := b.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, int(size), n)
	return got
}

// checkExtents checks that the extents cover the export in order and that
// every range claimed to read as zeroes does.
func checkExtents(t *testing.T, b Backend, data []byte) {
	t.Helper()
	var pos int64
	err := b.(Extenter).Extents(0, int64(len(data)), func(e Extent) bool {
		require.Equal(t, pos, e.Offset, "extent offset")
		require.Positive(t, e.Length, "extent length")
		end := min(e.Offset+e.Length, int64(len(data)))
		if e.Flags&ExtentZero != 0 {
			require.Equal(t, make([]byte, end-e.Offset), data[e.Offset:end], "extent %+v claims zeroes", e)
		}
		pos = e.Offset + e.Length
		return true
	})
	require.NoError(t, err)
	require.GreaterOrEqual(t, pos, int64(len(data)), "extents stop short")
}

// collectExtents returns the extents reported for [off, off+length).
func collectExtents(t *testing.T, e Extenter, off, length int64) []Extent {
	t.Helper()
	var got []Extent
	require.NoError(t, e.Extents(off, length, func(x Extent) bool {
		got = append(got, x)
		return true
	}))
	return got
}

const hz = ExtentHole | ExtentZero
