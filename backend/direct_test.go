//go:build linux

package backend

import (
	"errors"
	"syscall"
	"testing"

	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func openDirect(t *testing.T, size int64) *File {
	t.Helper()
	f, err := OpenFileDirect(tempImage(t, size), false)
	if errors.Is(err, syscall.EINVAL) {
		testenv.SkipOutsideCI(t, "filesystem of %s lacks O_DIRECT", t.TempDir())
	}
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFileDirect(t *testing.T) {
	const size = 1 << 20
	f := openDirect(t, size)
	require.Contains(t, []int64{512, 1024, 2048, 4096}, f.align, "O_DIRECT alignment")
	require.Equal(t, uint32(f.align), f.MinBlockSize())

	backing := make([]byte, 8192+1)
	for _, p := range [][]byte{backing[:4096], backing[1 : 4096+1]} { // aligned or not
		copy(p, randBytes(len(p), uint64(len(p))))
		want := append([]byte(nil), p...)
		_, err := f.WriteAt(p, 8192)
		require.NoError(t, err)
		clear(p)
		n, err := f.ReadAt(p, 8192)
		require.NoError(t, err)
		require.Equal(t, 4096, n)
		require.Equal(t, want, p)
	}

	_, err := f.ReadAt(make([]byte, 512), 100)
	require.ErrorIs(t, err, syscall.EINVAL, "unaligned offset")
	_, err = f.WriteAt(make([]byte, 100), 0)
	require.ErrorIs(t, err, syscall.EINVAL, "unaligned length")

	f.noPunch.Store(true)
	f.noZeroRange.Store(true)
	require.NoError(t, f.WriteZeroes(0, size, true, false), "zeroes written through O_DIRECT")
	require.Equal(t, make([]byte, size), readAll(t, f))
}

func TestFileDirectErrors(t *testing.T) {
	_, err := OpenFileDirect(tempImage(t, 1000), false)
	require.Error(t, err, "size not a multiple of 512")
	f, err := OpenFile(tempImage(t, 1000), false)
	require.NoError(t, err)
	defer f.Close()
	require.Equal(t, uint32(1), f.MinBlockSize())
}

// TestDirectAlign: the O_DIRECT alignment is what statx reports for the
// file where it reports one, and 512 bytes where it does not (tmpfs).
func TestDirectAlign(t *testing.T) {
	f, err := OpenFile(tempImage(t, 4096), false)
	require.NoError(t, err)
	defer f.Close()
	var st unix.Statx_t
	require.NoError(t, unix.Statx(unix.AT_FDCWD, f.File().Name(), 0, unix.STATX_DIOALIGN, &st))
	want := int64(defaultDirectAlign)
	if st.Mask&unix.STATX_DIOALIGN != 0 && st.Dio_offset_align != 0 {
		want = int64(max(st.Dio_offset_align, st.Dio_mem_align))
	}
	require.Equal(t, want, directAlign(f))

	g, err := NewFile(tmpfsFile(t, 0), false)
	require.NoError(t, err)
	defer g.Close()
	require.Equal(t, int64(defaultDirectAlign), directAlign(g), "tmpfs reports no alignment")
}
