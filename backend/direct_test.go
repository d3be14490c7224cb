//go:build linux

package backend

import (
	"errors"
	"github.com/nbdd/nbdd/internal/testenv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
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
	require.Equal(t, uint32(512), f.MinBlockSize())

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
