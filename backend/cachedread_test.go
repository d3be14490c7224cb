//go:build linux

package backend

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestReadCached: ReadCached reads data the page cache holds, gives up on
// data it does not hold (dropped with FADV_DONTNEED) and on ranges past
// the export, allocates nothing, and fails after Close.
func TestReadCached(t *testing.T) {
	const size = 256 << 10
	path := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.NoError(t, os.Truncate(path, size))
	f, err := OpenFile(path, false)
	require.NoError(t, err)
	if f.inMemory {
		testenv.SkipOutsideCI(t, "the test directory is in memory: its pages cannot be dropped")
	}
	var _ CachedReader = f
	data := bytes.Repeat([]byte("cached read "), size)[:size-100]
	_, err = f.WriteAt(data, 100)
	require.NoError(t, err)

	got := make([]byte, 8192)
	require.True(t, f.ReadCached(got, 100), "data just written is in the page cache")
	require.Equal(t, data[:8192], got)
	require.False(t, f.ReadCached(got, size-4096), "a range past the export")
	require.False(t, f.ReadCached(nil, 0), "an empty read")

	require.NoError(t, f.Sync()) // dirty pages cannot be dropped
	require.NoError(t, unix.Fadvise(int(f.File().Fd()), 0, 0, unix.FADV_DONTNEED))
	if f.Cached(0, size) {
		testenv.SkipOutsideCI(t, "the kernel kept the pages after FADV_DONTNEED")
	}
	require.False(t, f.ReadCached(got, 100), "data dropped from the page cache needs the disk")
	_, err = f.ReadAt(got, 100) // brings it back
	require.NoError(t, err)
	require.True(t, f.ReadCached(got, 100))
	require.Equal(t, data[:8192], got)

	allocs := testing.AllocsPerRun(100, func() {
		if !f.ReadCached(got, 100) {
			t.Fatal("cached read missed")
		}
	})
	if !raceEnabled && allocs != 0 {
		t.Errorf("ReadCached: %v allocs per call; want 0", allocs)
	}

	require.NoError(t, f.Close())
	require.False(t, f.ReadCached(got, 100), "after Close")
}

// TestReadCachedDirect: a file opened with O_DIRECT never reads from the
// page cache, so ReadCached always misses.
func TestReadCachedDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "direct.img")
	require.NoError(t, os.WriteFile(path, make([]byte, 64<<10), 0o600))
	f, err := OpenFileDirect(path, false)
	require.NoError(t, err)
	defer f.Close()
	require.False(t, f.ReadCached(make([]byte, 4096), 0))
}

// TestReadCachedDirectDescriptor: a descriptor opened with O_DIRECT and
// handed to NewFile is noticed, so ReadCached never reads from the device
// (RWF_NOWAIT does not stop an O_DIRECT read).
func TestReadCachedDirectDescriptor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "direct.img")
	require.NoError(t, os.WriteFile(path, make([]byte, 64<<10), 0o600))
	fd, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	require.NoError(t, err)
	require.NoError(t, fd.Sync()) // clean pages: an O_DIRECT read would not wait for writeback
	f, err := NewFile(fd, false)
	require.NoError(t, err)
	defer f.Close()
	require.False(t, f.ReadCached(make([]byte, 4096), 0))
}

// TestKnownData: KnownData answers from the data run Extents found last,
// and forgets it when a hole may have been made.
func TestKnownData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.img")
	require.NoError(t, os.WriteFile(path, make([]byte, 1<<20), 0o600))
	f, err := OpenFile(path, false)
	require.NoError(t, err)
	defer f.Close()
	require.False(t, f.KnownData(0, 4096), "nothing looked up yet")
	require.NoError(t, f.Extents(0, 1<<20, func(Extent) bool { return true }))
	if f.lastData.Load() == nil {
		testenv.SkipOutsideCI(t, "the filesystem reports no data runs")
	}
	require.True(t, f.KnownData(4096, 64<<10))
	require.False(t, f.KnownData(1<<20-4096, 8192), "past the run")
	require.NoError(t, f.Trim(0, 64<<10))
	require.False(t, f.KnownData(4096, 4096), "a TRIM may have made a hole")
}
