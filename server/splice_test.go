package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestSpliceWrites: large WRITEs to a file export are spliced from the
// socket into the file, taking no buffer, where the reader writes anyway:
// always for a file in memory (tmpfs), and for a file on disk only when
// the payload streams (under "stream", whose test chunk is 4 KiB); other
// WRITEs to a disk file keep their buffers and goroutines. Pipelined
// WRITEs at odd offsets and lengths, with and without FUA, land intact,
// and the stream stays in step for the request after them.
func TestSpliceWrites(t *testing.T) {
	runFileDirs(t, func(t *testing.T, strategy, dir string, onDisk bool) {
		spliced := testSpliceWrites(t, strategy, dir)
		if onDisk && strategy != "stream" {
			require.Zero(t, spliced, "a disk file's buffered WRITEs are not spliced")
		} else {
			require.Positive(t, spliced, "no WRITE was spliced")
		}
	})
}

// testSpliceWrites sends a pipelined batch of WRITEs to a file export in
// dir, checks the file, and returns the bytes the server spliced.
func testSpliceWrites(t *testing.T, strategy, dir string) int64 {
	const size = 8 << 20
	f, path := fileExport(t, dir, size, nil)
	srv := socketServer(t, strategy, size, bufferConfig{})
	srv.Exports = []Export{{Name: "d", Backend: f}}
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.handshake("d")

	writes := []struct {
		off, n int
		fua    bool
	}{{0, 64 << 10, false}, {4095, 256<<10 + 1, true}, {1<<20 + 7, 1<<20 + 3, false}, {3 << 20, 3 << 20, false}, {7 << 20, 100 << 10, true}}
	want := make([]byte, size)
	var reqs []protocol.Request
	var payloads [][]byte
	for i, w := range writes {
		data := pattern(w.n, byte(i+1))
		copy(want[w.off:], data)
		req := protocol.Request{Type: protocol.CmdWrite, Cookie: uint64(i), Offset: uint64(w.off), Length: uint32(w.n)}
		if w.fua {
			req.Flags = protocol.CmdFlagFUA
		}
		reqs, payloads = append(reqs, req), append(payloads, data)
	}
	wait := c.sendAsync(reqs, payloads...)
	for range writes { // in any order
		r := c.readReply()
		require.Equal(t, protocol.EOK, r.errno, "WRITE %d: %s", r.cookie, r.msg)
	}
	wait()
	if dir == "/dev/shm" {
		st := srv.BufferStats()
		require.Zero(t, st.Allocs+st.Hits, "in-memory file WRITEs take no buffer: %+v", st)
	}
	c.read(99, 4095, 4096)
	c.wantRead(99, want[4095:4095+4096])
	c.disc()
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "the file differs from what was written")
	return exportStats(srv, "d").Paths[PathWriteSpliced].Bytes
}

// brokenSplice is an in-memory file export whose splices fail after
// moving moveFirst bytes, with spliceErr, and whose WriteAt fails with
// writeErr when it is set: a failing device (both fail) or a filesystem
// that cannot splice (WriteAt works).
type brokenSplice struct {
	*backend.File
	moveFirst int
	mu        sync.Mutex // the test changes the errors between connections
	spliceErr error
	writeErr  error
}

func (b *brokenSplice) errs() (spliceErr, writeErr error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spliceErr, b.writeErr
}

func (b *brokenSplice) setErrs(spliceErr, writeErr error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.spliceErr, b.writeErr = spliceErr, writeErr
}

func (b *brokenSplice) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	m := min(n, b.moveFirst)
	if m > 0 {
		if moved, err := b.File.WriteFromPipe(pipe, off, m); err != nil {
			return moved, err
		}
	}
	spliceErr, _ := b.errs()
	return m, spliceErr
}

func (b *brokenSplice) WriteAt(p []byte, off int64) (int, error) {
	if _, writeErr := b.errs(); writeErr != nil {
		return 0, writeErr
	}
	return b.File.WriteAt(p, off)
}

// TestSpliceWriteFails: when the backend fails a splice part way, the
// bytes left in the pipe are written the ordinary way. If that works too
// (a filesystem that cannot splice), the WRITE succeeds intact and the
// connection copies from then on; if it fails (a failing device), the
// client gets the error and the rest of the payload is read and dropped,
// so the next request parses.
func TestSpliceWriteFails(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		const size = 4 << 20
		f, _ := fileExport(t, "/dev/shm", size, nil)
		b := &brokenSplice{File: f, moveFirst: 16 << 10, spliceErr: syscall.EINVAL}
		srv := socketServer(t, strategy, size, bufferConfig{})
		srv.Exports = []Export{{Name: "d", Backend: b}}
		sock, _ := serveUnix(t, srv)
		c := dialClient(t, sock)
		c.handshake("d")

		data := pattern(1<<20+5, 3)
		c.write(1, 1000, data)
		c.wantReply(1, protocol.EOK)
		c.write(2, 2<<20, data)
		c.wantReply(2, protocol.EOK)
		paths := exportStats(srv, "d").Paths
		require.Zero(t, paths[PathWriteSpliced].Requests, "splicing stops after it failed")
		require.Equal(t, int64(2), paths[PathWriteStreamed].Requests+paths[PathWriteBuffered].Requests, "both WRITEs were copied")
		for i, off := range []uint64{1000, 2 << 20} {
			c.read(uint64(10+i), off, uint32(len(data)))
			c.wantRead(uint64(10+i), data)
		}
		c.disc()

		b.setErrs(syscall.EIO, syscall.EIO)
		c = dialClient(t, sock)
		c.handshake("d")
		c.write(3, 0, pattern(1<<20, 4))
		c.wantReply(3, protocol.EIO)
		c.read(4, 1000, 4096)
		c.wantRead(4, data[:4096])
	})
}

// TestSplicePayloadCut: a client that goes away in the middle of a spliced
// payload ends its connection with an error, leaking nothing.
func TestSplicePayloadCut(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		f, _ := fileExport(t, "/dev/shm", 4<<20, nil)
		srv := socketServer(t, strategy, 4<<20, bufferConfig{})
		srv.Exports = []Export{{Name: "d", Backend: f}}
		c, result := serveSocketpair(t, srv)
		c.handshake("d")
		var hdr [protocol.RequestSize]byte
		req := protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Length: 1 << 20}
		req.Put(&hdr)
		c.writeRaw(append(hdr[:], pattern(300<<10, 1)...))
		c.nc.Close()
		require.ErrorIs(t, result(), io.ErrUnexpectedEOF)
	})
}

var errServeHung = errors.New("ServeConn did not return after the client closed")

// serveSocketpair serves srv on one end of a unix socketpair, so that the
// kernel-copy paths are on, and returns a client on the other end and the
// a function that waits for ServeConn's result.
func serveSocketpair(t *testing.T, srv *Server) (*client, func() error) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		require.NoError(t, err)
	}
	done := make(chan struct{})
	var served error
	go func() {
		served = srv.ServeConn(context.Background(), conns[0])
		close(done)
	}()
	result := func() error {
		select {
		case <-done:
			return served
		case <-time.After(ioTimeout):
			return errServeHung
		}
	}
	t.Cleanup(func() {
		conns[1].Close()
		if err := result(); errors.Is(err, errServeHung) {
			t.Error(err)
		}
	})
	return newClient(t, conns[1]), result
}
