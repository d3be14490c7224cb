//go:build linux

package backend

import (
	"bytes"
	"github.com/nbdd/nbdd/internal/testenv"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func newTestMapped(t *testing.T, size int64, mergeable bool) *Mapped {
	t.Helper()
	m, err := NewMapped(size, mergeable)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestMappedLayout(t *testing.T) {
	ps := unix.Getpagesize()
	for _, size := range []int64{0, 1, int64(ps), int64(ps) + 1} {
		m := newTestMapped(t, size, false)
		require.Zero(t, m.Len()%ps, "size %d: Len not whole pages", size)
		require.GreaterOrEqual(t, int64(m.Len()), size)
		require.Len(t, m.Bytes(), int(size))
		require.Equal(t, m.Base(), uintptr(unsafe.Pointer(unsafe.SliceData(m.mem))))
	}
	_, err := NewMapped(-1, false)
	require.Error(t, err)
}

// residentPages counts the pages of b that are in memory (mincore).
func residentPages(t *testing.T, b []byte) int {
	t.Helper()
	vec := make([]byte, (len(b)+unix.Getpagesize()-1)/unix.Getpagesize())
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))),
		uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	require.Zero(t, errno, "mincore: %v", errno)
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestMappedDontNeed checks that trimming whole pages gives them back to
// the kernel and that partial pages are cleared in place.
func TestMappedDontNeed(t *testing.T) {
	const size = 64 * 4096
	m := newTestMapped(t, size, false)
	_, err := m.WriteAt(bytes.Repeat([]byte{0xaa}, size), 0)
	require.NoError(t, err)
	require.Equal(t, size/4096, residentPages(t, m.mem))

	require.NoError(t, m.Trim(100, size-200))
	require.Equal(t, 2, residentPages(t, m.mem), "want only the two edge pages resident")
	want := make([]byte, size)
	copy(want, bytes.Repeat([]byte{0xaa}, 100))
	copy(want[size-100:], bytes.Repeat([]byte{0xaa}, 100))
	require.Equal(t, want, readAll(t, m))
}

func TestMappedExtents(t *testing.T) {
	const size = 4*trackSize + 100
	m := newTestMapped(t, size, false)
	require.Equal(t, []Extent{{0, size, hz}}, collectExtents(t, m, 0, size))
	m.WriteAt([]byte{1}, trackSize+5)
	m.WriteAt([]byte{1}, size-1)
	require.Equal(t, []Extent{{0, trackSize, hz}, {trackSize, trackSize, 0}, {2 * trackSize, 2 * trackSize, hz}, {4 * trackSize, 100, 0}},
		collectExtents(t, m, 0, size))
	require.NoError(t, m.Trim(4*trackSize, 100))
	require.NoError(t, m.WriteZeroes(trackSize, trackSize, true, true))
	require.Equal(t, []Extent{{0, trackSize, hz}, {trackSize, trackSize, 0}, {2 * trackSize, 2*trackSize + 100, hz}},
		collectExtents(t, m, 0, size), "trimmed tail block is a hole; noHole keeps data")
}

// TestMappedPersist writes through a persistent and an ephemeral export and
// checks what reaches the image file.
func TestMappedPersist(t *testing.T) {
	const size = 3*trackSize + 777
	for _, persist := range []bool{true, false} {
		path := tempImage(t, size)
		orig := randBytes(size, 5)
		clear(orig[trackSize : 2*trackSize]) // a zero block stays a hole
		require.NoError(t, os.WriteFile(path, orig, 0o600))

		m, err := LoadMapped(path, false, persist)
		require.NoError(t, err)
		require.Equal(t, orig, readAll(t, m), "loaded image")
		require.Equal(t, Extent{trackSize, trackSize, hz}, collectExtents(t, m, 0, size)[1])

		want := bytes.Clone(orig)
		patch := randBytes(5000, 6)
		_, err = m.WriteAt(patch, 2*trackSize-10)
		require.NoError(t, err)
		copy(want[2*trackSize-10:], patch)
		require.NoError(t, m.Trim(0, trackSize))
		clear(want[:trackSize])
		require.NoError(t, m.Sync())

		onDisk, err := os.ReadFile(path)
		require.NoError(t, err)
		if persist {
			require.Equal(t, want, onDisk, "persistent: Sync must write back")
		} else {
			require.Equal(t, orig, onDisk, "ephemeral: the image must not change")
		}
		require.NoError(t, m.Close())
	}
}

// TestMappedCloseSyncs checks that Close writes a persistent export back.
func TestMappedCloseSyncs(t *testing.T) {
	path := tempImage(t, 8192)
	m, err := LoadMapped(path, false, true)
	require.NoError(t, err)
	_, err = m.WriteAt([]byte("kept"), 4096)
	require.NoError(t, err)
	require.NoError(t, m.Close())
	require.NoError(t, m.Close(), "second Close")
	onDisk, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "kept", string(onDisk[4096:4100]))
}

// TestMappedMergeable checks that MADV_MERGEABLE reached the kernel, as
// /proc/self/ksm_stat reports (Linux 6.x).
func TestMappedMergeable(t *testing.T) {
	m := newTestMapped(t, 1<<20, true)
	_, err := m.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 0)
	require.NoError(t, err)
	stat, err := os.ReadFile("/proc/self/ksm_stat")
	if os.IsNotExist(err) {
		testenv.SkipOutsideCI(t, "/proc/self/ksm_stat absent")
	}
	require.NoError(t, err)
	require.Contains(t, strings.Split(string(stat), "\n"), "ksm_mergeable: yes", "got %s", stat)
}

func TestNonBlocking(t *testing.T) {
	require.True(t, NewMemory(1).NonBlocking())
	require.True(t, ReadOnly(NewMemory(1)).(NonBlocker).NonBlocking())
	m, err := NewMapped(1, false)
	require.NoError(t, err)
	defer m.Close()
	require.True(t, m.NonBlocking())
	// Whether a File is on tmpfs is found at open (TestFileTmpfs); here,
	// what follows from it.
	f := openTempFile(t, 1).(*File)
	f.inMemory = false
	require.False(t, f.NonBlocking(), "a File on a disk may block on I/O")
	f.inMemory = true
	require.True(t, f.NonBlocking(), "a File on tmpfs never waits on a device")
	f.direct = true
	require.False(t, f.NonBlocking(), "O_DIRECT never claims it")
}

// TestMappedSyncError checks that a failed write-back is reported and
// retried by the next Sync.
func TestMappedSyncError(t *testing.T) {
	path := tempImage(t, 3*trackSize)
	m, err := LoadMapped(path, false, true)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	_, err = m.WriteAt([]byte("retry"), trackSize)
	require.NoError(t, err)

	require.NoError(t, m.file.Close()) // make write-back fail
	require.Error(t, m.Sync(), "Sync must report the failed write-back")
	m.file, err = os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	require.NoError(t, m.Sync())
	onDisk, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "retry", string(onDisk[trackSize:trackSize+5]))
}

// failFdatasync makes fdatasync fail with EIO until the returned function
// (also run at cleanup) restores it. Tests that use it must not run in
// parallel with others that sync.
func failFdatasync(t *testing.T) (restore func()) {
	real := fdatasync
	fdatasync = func(int) error { return unix.EIO }
	restore = func() { fdatasync = real }
	t.Cleanup(restore)
	return restore
}

// TestMappedFdatasyncError: when fdatasync fails after the write-back,
// the blocks written back are dirty again, so the next Sync writes them
// from memory once more instead of trusting pages the kernel may have
// dropped.
func TestMappedFdatasyncError(t *testing.T) {
	path := tempImage(t, 3*trackSize)
	m, err := LoadMapped(path, false, true)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	_, err = m.WriteAt([]byte("again"), trackSize)
	require.NoError(t, err)

	restore := failFdatasync(t)
	require.ErrorIs(t, m.Sync(), unix.EIO)
	require.True(t, m.dirty.get(1), "the block is dirty again after the failed fdatasync")
	restore()
	require.NoError(t, m.Sync())
	require.False(t, m.dirty.get(1), "written back and synced")
	require.False(t, m.unsynced.get(1))
}

// TestMappedSizeBounds: sizes near 2^63, where rounding up to pages and
// tracking blocks would overflow, are refused with an error, never a
// panic; so are negative ones.
func TestMappedSizeBounds(t *testing.T) {
	for _, size := range []int64{-1, 1<<63 - 1, 1<<63 - 100, 1<<63 - 5000, maxMappedSize + 1} {
		m, err := NewMapped(size, false)
		if err == nil {
			m.Close()
			t.Errorf("NewMapped(%d) succeeded; want an error", size)
		}
	}
}

// TestMappedZeroWriteRace: WRITE and WRITE_ZEROES racing on one block may
// leave either's content, but Extents must never call the block a hole
// while it holds data (a sparse copy would skip that data).
func TestMappedZeroWriteRace(t *testing.T) {
	const size = 4 * trackSize
	m, err := NewMapped(size, false)
	require.NoError(t, err)
	defer m.Close()
	data := bytes.Repeat([]byte{0xa5}, trackSize)
	deadline := time.Now().Add(300 * time.Millisecond)
	for round := 0; time.Now().Before(deadline); round++ {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); m.WriteAt(data, trackSize) }()
		go func() { defer wg.Done(); m.WriteZeroes(trackSize, trackSize, false, false) }()
		wg.Wait()
		var hole bool
		require.NoError(t, m.Extents(trackSize, trackSize, func(e Extent) bool {
			hole = hole || e.Flags&ExtentZero != 0
			return true
		}))
		if hole && !bytes.Equal(m.Bytes()[trackSize:2*trackSize], make([]byte, trackSize)) {
			t.Fatalf("round %d: Extents reports zeroes over data", round)
		}
	}
}

// TestMappedSyncWaits: only a persistent Mapped export's Sync writes to a
// file, and decorators pass that on, so the server keeps its FLUSH and
// FUA writes off the reader (backend.SyncWaiter).
func TestMappedSyncWaits(t *testing.T) {
	anon, err := NewMapped(1<<20, false)
	require.NoError(t, err)
	defer anon.Close()
	img := tempImage(t, 1<<20)
	persist, err := LoadMapped(img, false, true)
	require.NoError(t, err)
	defer persist.Close()
	for name, tc := range map[string]struct {
		b    Backend
		want bool
	}{
		"ephemeral":            {anon, false},
		"persistent":           {persist, true},
		"read-only persistent": {ReadOnly(persist), true},
		"memory":               {NewMemory(4096), false},
	} {
		sw, ok := tc.b.(SyncWaiter)
		if got := ok && sw.SyncWaits(); got != tc.want {
			t.Errorf("%s: SyncWaits = %v; want %v", name, got, tc.want)
		}
	}
}
