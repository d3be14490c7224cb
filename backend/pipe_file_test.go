//go:build linux

package backend

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// pipeWith returns the read end of a pipe holding data.
func pipeWith(t *testing.T, data []byte) int {
	t.Helper()
	var fds [2]int
	require.NoError(t, unix.Pipe2(fds[:], unix.O_CLOEXEC))
	t.Cleanup(func() { unix.Close(fds[0]) })
	_, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, 1<<20)
	require.NoError(t, err)
	n, err := unix.Write(fds[1], data)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	unix.Close(fds[1])
	return fds[0]
}

// TestFileWriteFromPipe: WriteFromPipe moves exactly n bytes from the pipe
// into the file at off, leaving the rest in the pipe; out of range or on a
// read-only File it moves nothing and fails as WriteAt does. An O_DIRECT
// File says it cannot.
func TestFileWriteFromPipe(t *testing.T) {
	f := newTestFile(t, 1<<20)
	require.True(t, f.CanWriteFromPipe())
	data := bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16)
	pipe := pipeWith(t, data)

	n, err := f.WriteFromPipe(pipe, 4097, 200<<10)
	require.NoError(t, err)
	require.Equal(t, 200<<10, n)
	got := make([]byte, 200<<10)
	_, err = f.ReadAt(got, 4097)
	require.NoError(t, err)
	require.Equal(t, data[:200<<10], got)

	n, err = f.WriteFromPipe(pipe, 1<<20-10, 11)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.Zero(t, n)
	rest := make([]byte, 200<<10)
	m, _ := unix.Read(pipe, rest)
	require.Equal(t, data[200<<10:], rest[:m], "the rest stays in the pipe")

	n, err = f.WriteFromPipe(pipeWith(t, []byte("short")), 0, 10)
	require.Error(t, err, "a pipe with fewer bytes than promised")
	require.Equal(t, 5, n)

	ro, err := NewFile(f.File(), true)
	require.NoError(t, err)
	_, err = ro.WriteFromPipe(pipeWith(t, []byte("x")), 0, 1)
	require.ErrorIs(t, err, ErrReadOnly)

	d := openDirect(t, 4096)
	require.False(t, d.CanWriteFromPipe())
	_, err = d.WriteFromPipe(pipeWith(t, make([]byte, 512)), 0, 512)
	require.True(t, errors.Is(err, errors.ErrUnsupported))
}

// TestFileConcurrentWrites: WRITEs from many goroutines at once, through
// WriteAt and WriteFromPipe, all land (and, under -race, share no state
// unguarded); a regular file takes them one at a time (writeMu).
func TestFileConcurrentWrites(t *testing.T) {
	const writers, n = 32, 64 << 10
	f := newTestFile(t, writers*n)
	require.True(t, f.serialWrites)
	want := make([]byte, writers*n)
	pipes := make([]int, writers)
	for i := range writers {
		copy(want[i*n:], bytes.Repeat([]byte{byte(i + 1)}, n))
		pipes[i] = pipeWith(t, want[i*n:(i+1)*n])
	}
	errs := make(chan error, writers)
	for i := range writers {
		go func() {
			var err error
			if i%2 == 0 {
				_, err = f.WriteAt(want[i*n:(i+1)*n], int64(i*n))
			} else {
				_, err = f.WriteFromPipe(pipes[i], int64(i*n), n)
			}
			errs <- err
		}()
	}
	for range writers {
		require.NoError(t, <-errs)
	}
	got := make([]byte, len(want))
	_, err := f.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
}
