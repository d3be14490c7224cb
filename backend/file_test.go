//go:build linux

package backend

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func newTestFile(t *testing.T, size int64) *File {
	t.Helper()
	return openTempFile(t, size).(*File)
}

func TestFileExtents(t *testing.T) {
	const size = 4 << 20
	f := newTestFile(t, size)
	data := randBytes(8192, 3)
	_, err := f.WriteAt(data, 1<<20)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	got := collectExtents(t, f, 0, size)
	want := make([]byte, size)
	copy(want[1<<20:], data)
	checkExtents(t, f, want)
	// ext4 and tmpfs report holes; on a filesystem without SEEK_DATA the
	// whole file is one data extent, which checkExtents accepts too.
	if len(got) > 1 {
		require.Equal(t, Extent{0, 1 << 20, hz}, got[0])
		require.Equal(t, ExtentFlags(0), got[1].Flags)
	}

	require.NoError(t, f.Trim(0, size))
	checkExtents(t, f, make([]byte, size))

	f.noSeekData.Store(true)
	require.Equal(t, []Extent{{0, size, 0}}, collectExtents(t, f, 0, size), "fallback: one data extent")
}

// TestFileExtentsAfterPunch: a hole punched inside a run of data that an
// earlier lookup cached (File.lastData) is reported as a hole.
func TestFileExtentsAfterPunch(t *testing.T) {
	const size = 1 << 20
	f := newTestFile(t, size)
	_, err := f.WriteAt(randBytes(size, 5), 0)
	require.NoError(t, err)
	require.Equal(t, []Extent{{0, size, 0}}, collectExtents(t, f, 0, size))
	require.NotNil(t, f.lastData.Load(), "the data run is cached")
	require.Equal(t, []Extent{{4096, 8192, 0}}, collectExtents(t, f, 4096, 8192), "answered from the cache")
	require.NoError(t, f.Trim(256<<10, 256<<10))
	if f.noPunch.Load() {
		testenv.SkipOutsideCI(t, "the temporary directory's filesystem cannot punch holes")
	}
	require.Contains(t, collectExtents(t, f, 0, size), Extent{256 << 10, 256 << 10, hz})
}

// TestFileZeroFallback forces the paths taken when fallocate is not
// supported: ErrNotFast without touching data for fast zeroes, and zeroes
// written in pieces otherwise.
func TestFileZeroFallback(t *testing.T) {
	const size = 1<<20 + 100
	f := newTestFile(t, size)
	data := randBytes(size, 4)
	_, err := f.WriteAt(data, 0)
	require.NoError(t, err)
	f.noPunch.Store(true)
	f.noZeroRange.Store(true)

	for _, noHole := range []bool{false, true} {
		require.ErrorIs(t, f.WriteZeroes(10, 1000, noHole, true), ErrNotFast)
	}
	require.Equal(t, data, readAll(t, f), "fast zero that failed must leave data untouched")

	require.NoError(t, f.WriteZeroes(10, size-20, true, false))
	clear(data[10 : size-10])
	require.Equal(t, data, readAll(t, f))

	require.NoError(t, f.Trim(0, size), "trim without punch support is a successful no-op")
	require.Equal(t, data, readAll(t, f))
}

// TestFileTmpfs exercises a filesystem that punches holes but has no
// ZERO_RANGE, so noHole zeroing must fall back for real.
func TestFileTmpfs(t *testing.T) {
	const size = 256 << 10
	tmp := tmpfsFile(t, size)
	f, err := NewFile(tmp, false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.True(t, f.NonBlocking(), "a file on tmpfs never waits on a device")
	_, err = f.WriteAt(bytes.Repeat([]byte{0xff}, size), 0)
	require.NoError(t, err)
	require.NoError(t, f.WriteZeroes(4096, 8192, true, false))
	require.NoError(t, f.WriteZeroes(65536, 65536, false, true))
	want := bytes.Repeat([]byte{0xff}, size)
	clear(want[4096 : 4096+8192])
	clear(want[65536 : 2*65536])
	require.Equal(t, want, readAll(t, f))
}

func TestFileReadOnly(t *testing.T) {
	path := tempImage(t, 8192)
	rw, err := OpenFile(path, false)
	require.NoError(t, err)
	_, err = rw.WriteAt([]byte("hello"), 100)
	require.NoError(t, err)
	require.NoError(t, rw.Close())

	f, err := OpenFile(path, true)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.True(t, f.ReadOnly())
	got := make([]byte, 5)
	_, err = f.ReadAt(got, 100)
	require.NoError(t, err)
	require.Equal(t, "hello", string(got))
	_, err = f.WriteAt(got, 0)
	require.ErrorIs(t, err, ErrReadOnly)
	_, err = f.WriteAtFUA(got, 0)
	require.ErrorIs(t, err, ErrReadOnly)
	require.ErrorIs(t, f.Trim(0, 10), ErrReadOnly)
	require.ErrorIs(t, f.WriteZeroes(0, 10, false, false), ErrReadOnly)
}

func TestFileFUAAndSync(t *testing.T) {
	f := newTestFile(t, 8192)
	for _, noDSync := range []bool{false, true} { // RWF_DSYNC, then the fallback
		f.noDSync.Store(noDSync)
		n, err := f.WriteAtFUA([]byte("durable"), 4000)
		require.NoError(t, err)
		require.Equal(t, 7, n)
		require.Equal(t, noDSync, f.noDSync.Load(), "RWF_DSYNC unexpectedly unsupported")
		got := make([]byte, 7)
		_, err = f.ReadAt(got, 4000)
		require.NoError(t, err)
		require.Equal(t, "durable", string(got))
		clear(got)
		_, err = f.WriteAt(got, 4000)
		require.NoError(t, err)
	}
	_, err := f.WriteAtFUA([]byte("x"), 8192)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.NotNil(t, f.File())
	require.NoError(t, f.Cache(0, 8192))
	require.NoError(t, f.Cache(0, 0))
	require.NoError(t, f.Close())
	require.Error(t, f.Sync(), "Sync after Close: want the fdatasync error, not nil")
}

func TestFileOpenErrors(t *testing.T) {
	_, err := OpenFile(t.TempDir()+"/missing", false)
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = OpenFile(t.TempDir(), true)
	require.Error(t, err, "directory")
	_, err = OpenFile("/dev/null", true)
	require.Error(t, err, "character device")
}

// TestFileBlockDevice opens the first block device the test may open,
// checks that its size comes from the device (a block device's Stat size is
// 0) and, if it has data, reads it and maps it as one data extent. Set
// NBDD_TEST_BLOCKDEV to choose the device.
func TestFileBlockDevice(t *testing.T) {
	devs := []string{"/dev/vda", "/dev/loop0", "/dev/zram0"}
	if d := os.Getenv("NBDD_TEST_BLOCKDEV"); d != "" {
		devs = []string{d}
	}
	var f *File
	for _, dev := range devs {
		if b, err := OpenFile(dev, true); err == nil {
			f = b
			break
		}
	}
	if f == nil {
		testenv.SkipOutsideCI(t, "cannot open any of %v", devs)
	}
	t.Cleanup(func() { f.Close() })
	size, err := f.Size()
	require.NoError(t, err)
	t.Logf("%s: %d bytes", f.File().Name(), size)
	if size < 4096 {
		return
	}
	require.Equal(t, []Extent{{0, 4096, 0}}, collectExtents(t, f, 0, 4096), "block devices have no SEEK_DATA")
	_, err = f.ReadAt(make([]byte, 4096), size-4096)
	require.NoError(t, err)
	require.False(t, f.serialWrites, "the kernel writes to a block device in parallel")
}

// TestFileBlockDeviceWrite runs the write, zeroing and sync paths on the
// scratch block device named by NBDD_TEST_BLOCKDEV_RW, whose first 4 MiB it
// overwrites.
func TestFileBlockDeviceWrite(t *testing.T) {
	dev := os.Getenv("NBDD_TEST_BLOCKDEV_RW")
	if dev == "" {
		// Opt-in, also in CI: it overwrites the device it is given.
		t.Skip("set NBDD_TEST_BLOCKDEV_RW to a scratch block device to run (opt-in in CI too: destructive)")
	}
	f, err := OpenFile(dev, false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	size, err := f.Size()
	require.NoError(t, err)
	n := min(size, 4<<20)
	require.GreaterOrEqual(t, n, int64(256<<10))
	want := randBytes(int(n), 11)
	_, err = f.WriteAtFUA(want, 0)
	require.NoError(t, err)
	require.NoError(t, f.WriteZeroes(0, 64<<10, true, false))
	require.NoError(t, f.WriteZeroes(64<<10, 64<<10, false, false))
	clear(want[:128<<10])
	require.NoError(t, f.Trim(128<<10, 64<<10)) // advisory: contents unchecked
	require.NoError(t, f.Sync())
	got := make([]byte, n)
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, want[:128<<10], got[:128<<10])
	require.Equal(t, want[192<<10:], got[192<<10:])
}

// TestFileCached: Cached tells a range in the page cache from one that is
// not, so that the server sends only cached data with sendfile.
func TestFileCached(t *testing.T) {
	const size = 1 << 20
	path := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte{0x5a}, size/2), 0o600))
	require.NoError(t, os.Truncate(path, size))
	f, err := OpenFile(path, false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.True(t, f.Cached(0, size/2), "data just written is in the page cache")
	require.True(t, f.Cached(4095, 3), "a range within one cached page")
	require.False(t, f.Cached(size/2, 4096), "a hole was never cached")
	require.False(t, f.Cached(0, size), "a range that is half hole")
	require.NoError(t, f.Sync())
	require.NoError(t, unix.Fadvise(int(f.File().Fd()), 0, 0, unix.FADV_DONTNEED))
	require.False(t, f.Cached(0, size/2), "pages dropped from the cache")

	d, err := OpenFileDirect(path, true)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	require.False(t, d.Cached(0, 4096), "O_DIRECT reads bypass the cache")
}

// TestFileSyncFailureSticks: after a failed fdatasync every later Sync
// fails too, since Linux reports a failed write-back only once and the
// data may be gone; a FUA write's own durability is unaffected.
func TestFileSyncFailureSticks(t *testing.T) {
	f := newTestFile(t, 8192)
	_, err := f.WriteAt([]byte("lost?"), 0)
	require.NoError(t, err)
	restore := failFdatasync(t)
	require.ErrorIs(t, f.Sync(), unix.EIO)
	restore()
	require.ErrorIs(t, f.Sync(), unix.EIO, "the next Sync still reports the failure")
	require.ErrorIs(t, f.Sync(), unix.EIO, "and every one after")
	_, err = f.WriteAtFUA([]byte("new"), 100)
	require.NoError(t, err, "RWF_DSYNC makes this write durable on its own")
}

// TestFileZeroingFallbacks: a range fallocate refuses (EINVAL, as a block
// device does for unaligned ranges) is a hint ignored by Trim and zeroed
// by writing for WriteZeroes, or ErrNotFast when fast; and a block
// device's fast zero never takes ZERO_RANGE, which the kernel would turn
// into writes.
func TestFileZeroingFallbacks(t *testing.T) {
	f := newTestFile(t, 8192)
	ones := bytes.Repeat([]byte{1}, 8192)
	_, err := f.WriteAt(ones, 0)
	require.NoError(t, err)

	real := fallocate
	t.Cleanup(func() { fallocate = real })
	fallocate = func(int, uint32, int64, int64) error { return unix.EINVAL }
	require.NoError(t, f.Trim(1, 511), "TRIM of a refused range is ignored")
	require.ErrorIs(t, f.WriteZeroes(1, 511, false, true), ErrNotFast)
	require.NoError(t, f.WriteZeroes(1, 511, false, false))
	got := make([]byte, 8192)
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	want := append(append([]byte{1}, make([]byte, 511)...), ones[512:]...)
	require.Equal(t, want, got, "zeroes written where fallocate refused")

	fallocate = real
	f.blockDev = true
	f.noPunch.Store(true) // a device without a zeroing offload
	require.ErrorIs(t, f.WriteZeroes(0, 4096, true, true), ErrNotFast, "no ZERO_RANGE for a block device's fast zero")
	require.NoError(t, f.WriteZeroes(0, 4096, true, false))
}

// TestMayBeWriteBack: an RWF_DSYNC write's error is taken as a possible
// write-back failure (and kept for every later Sync) unless only the
// write or the call itself can cause it.
func TestMayBeWriteBack(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{unix.EIO, true},
		{unix.ENOSPC, true},
		{unix.EDQUOT, true},
		{unix.ESTALE, true},    // NFS
		{unix.EREMOTEIO, true}, // NFS, CIFS
		{unix.EROFS, true},     // remounted read-only after an error
		{fmt.Errorf("wrapped: %w", unix.ETIMEDOUT), true},
		{unix.EINVAL, false},
		{unix.EOPNOTSUPP, false},
		{unix.ENOSYS, false}, // no pwritev2 (seccomp, old kernels): the fallback syncs
		{unix.EFAULT, false},
		{unix.EFBIG, false},
		{unix.EPERM, false},
		{io.ErrShortWrite, false},
	} {
		if got := mayBeWriteBack(tc.err); got != tc.want {
			t.Errorf("mayBeWriteBack(%v) = %v; want %v", tc.err, got, tc.want)
		}
	}
}

// tmpfsFile is a new file of size bytes in /dev/shm, removed after the
// test. Tests of tmpfs behaviour skip without /dev/shm, except under CI.
func tmpfsFile(t *testing.T, size int64) *os.File {
	t.Helper()
	if _, err := os.Stat("/dev/shm"); err != nil {
		testenv.SkipOutsideCI(t, "no /dev/shm")
	}
	f, err := os.CreateTemp("/dev/shm", "nbdd-backend-*")
	require.NoError(t, err)
	t.Cleanup(func() { os.Remove(f.Name()) })
	require.NoError(t, f.Truncate(size))
	return f
}
