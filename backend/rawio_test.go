//go:build linux

package backend

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRawIO: a File on tmpfs reads and writes with raw pread and pwrite
// (rawio.go), with os.File's results: the bytes round-trip, a read
// reaching the end of the file gives io.EOF, an error is an
// *fs.PathError naming the file, a closed file reports os.ErrClosed, and
// a call allocates nothing.
func TestRawIO(t *testing.T) {
	const size = 64 << 10
	tmp := tmpfsFile(t, size)
	f, err := NewFile(tmp, false)
	require.NoError(t, err)
	require.True(t, f.inMemory, "a file in /dev/shm is in memory")

	data := bytes.Repeat([]byte("nbdd raw io "), size)[:size-100]
	n, err := f.WriteAt(data, 100)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	got := make([]byte, len(data))
	n, err = f.ReadAt(got, 100)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	require.Equal(t, data, got)

	// ReadAt cuts reads at the export's size itself; the file may be
	// shorter than that if someone truncated it, which pread reports as
	// the end of the file.
	require.NoError(t, tmp.Truncate(4096))
	n, err = f.pread(make([]byte, 8192), 0)
	require.Equal(t, 4096, n)
	require.ErrorIs(t, err, io.EOF)

	_, err = rawTransfer(&File{f: tmp, rc: f.rc}, false, make([]byte, 1), -1) // pread rejects a negative offset
	var pe *fs.PathError
	require.True(t, errors.As(err, &pe), "error %v (%T) is not an *fs.PathError", err, err)
	require.Equal(t, tmp.Name(), pe.Path)

	buf := make([]byte, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := f.pread(buf, 0); err != nil {
			t.Fatal(err)
		}
	})
	if !raceEnabled && allocs != 0 {
		t.Errorf("pread on tmpfs: %v allocs per call; want 0", allocs)
	}

	require.NoError(t, f.Close())
	_, err = f.pread(buf, 0)
	require.ErrorIs(t, err, os.ErrClosed)
}
