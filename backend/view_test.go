package backend

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// lender is a backend that lends its memory both ways.
type lender interface {
	Backend
	Viewer
	WriteViewer
	Extenter
}

func lenders(t *testing.T, size int64) map[string]lender {
	anon, err := NewMapped(size, false)
	require.NoError(t, err)
	t.Cleanup(func() { anon.Close() })
	return map[string]lender{"memory": NewMemory(size), "mapped": anon}
}

// TestWriteViewRoundTrip: bytes put into a write view, across chunk
// boundaries and into unwritten space, read back through ReadAt and
// through a read view, and the range is data for Extents.
func TestWriteViewRoundTrip(t *testing.T) {
	const size = 1 << 20
	for name, b := range lenders(t, size) {
		t.Run(name, func(t *testing.T) {
			off, n := int64(chunkSize-10), int64(2*chunkSize+20)
			iov, err := b.AppendWriteView(nil, off, n)
			require.NoError(t, err)
			require.Equal(t, int(n), totalLen(iov))
			want := bytes.Repeat([]byte{0x5a}, int(n))
			fill(iov, want)
			b.CommitWriteView(off, n)

			got := make([]byte, n)
			_, err = b.ReadAt(got, off)
			require.NoError(t, err)
			require.Equal(t, want, got)
			views, err := b.AppendView(nil, off, n)
			require.NoError(t, err)
			require.Equal(t, want, bytes.Join(views, nil))

			var ext []Extent
			require.NoError(t, b.Extents(off, n, func(e Extent) bool { ext = append(ext, e); return true }))
			for _, e := range ext {
				require.Zero(t, e.Flags, "extent %+v of a written view must be data", e)
			}
		})
	}
}

func TestWriteViewOutOfRange(t *testing.T) {
	for name, b := range lenders(t, 4096) {
		t.Run(name, func(t *testing.T) {
			iov, err := b.AppendWriteView(nil, 4000, 100)
			require.True(t, errors.Is(err, ErrOutOfRange), "got %v; want ErrOutOfRange", err)
			require.Empty(t, iov)
		})
	}
}

// TestWriteViewPersists: a persistent mapped export writes bytes put into a
// write view back to its image on Sync, once they are committed.
func TestWriteViewPersists(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	m, err := LoadMapped(img, false, true)
	require.NoError(t, err)
	defer m.Close()
	iov, err := m.AppendWriteView(nil, 5000, 70000)
	require.NoError(t, err)
	want := bytes.Repeat([]byte{0xc3}, 70000)
	fill(iov, want)
	m.CommitWriteView(5000, 70000)
	require.NoError(t, m.Sync())
	got, err := os.ReadFile(img)
	require.NoError(t, err)
	require.Equal(t, want, got[5000:75000])
}

func totalLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

// fill copies src into the slices of iov in order.
func fill(iov [][]byte, src []byte) {
	for _, b := range iov {
		src = src[copy(b, src):]
	}
}
