package server

import (
	"errors"
	"fmt"
	"io"
	"syscall"

	"golang.org/x/sys/unix"
)

// WRITEs of spliceMin bytes or more to a file export (backend.PipeWriter)
// over a plain socket take their payload with splice(2): from the socket
// into a pipe, which moves references to the socket's pages, then from the
// pipe into the file, which copies the bytes once, into the page cache.
// Read into a buffer and written out, they would be copied twice. The
// write runs on the reader and needs no buffer, no budget and no
// goroutine, so the planner (planWrite) uses it where the reader writes
// anyway:
//
//   - for files that never wait on a device (tmpfs: backend.NonBlocker),
//     as the other in-place writes of payload.go, whatever the strategy;
//   - for any file when the payload streams: larger than the strategy's
//     buffers, or the budget is full.
//
// A WRITE to a file on a disk otherwise goes through a buffer and a
// goroutine of its own, so that a write stalled on the device (writeback,
// dirty-page throttling) never stops the reader and the requests behind
// it; measured on ext4, splicing those inline was no faster either
// (docs/strategies.md).
//
// Errors keep the stream in step: a backend error leaves the rest of the
// payload to be read and dropped, and the client gets the error; only a
// socket error ends the connection.

// pipeSize is the capacity asked of the connection's pipe: four 256 KiB
// payloads' worth of pages moved per pair of calls. Linux lets an
// unprivileged process ask for up to /proc/sys/fs/pipe-max-size (1 MiB by
// default); past pipe-user-pages-soft the request fails and the pipe keeps
// its default 64 KiB, which still works, in smaller steps.
const pipeSize = 1 << 20

// pipeIn splices from the socket into the connection's pipe. Like vecIO,
// its state lives in the struct so that the RawConn callback is made once.
// It belongs to the reader.
type pipeIn struct {
	rc   syscall.RawConn
	r, w int // the pipe's read and write ends
	size int // its capacity in bytes
	want int // what the call in progress asks for
	n    int // its result
	err  error
	fn   func(fd uintptr) bool
	// onBlock runs each time the socket is found empty, before the runtime
	// waits for it (see vecIO.onBlock).
	onBlock func()
}

// openPipe makes the connection's pipe on first use; transmit closes it.
func (c *conn) openPipe() (*pipeIn, error) {
	if c.pipe != nil {
		return c.pipe, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("pipe for splice: %w", err)
	}
	p := &pipeIn{rc: c.src.in.rc, r: fds[0], w: fds[1], onBlock: c.payloadClock}
	p.fn = p.call
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil {
		p.close()
		return nil, fmt.Errorf("pipe size: %w", err)
	}
	p.size = size
	c.pipe = p
	return p, nil
}

func (p *pipeIn) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// call is the RawConn callback: one splice from the socket, retried on
// EINTR; false on EAGAIN, so the runtime waits for the socket. Unlike
// vecIO's calls it is not raw: SPLICE_F_NONBLOCK makes the pipe's end
// non-blocking, but a TCP socket's end follows the socket's own O_NONBLOCK,
// which whoever holds a copy of the descriptor may clear.
func (p *pipeIn) call(fd uintptr) bool {
	for {
		n, err := unix.Splice(int(fd), nil, p.w, nil, p.want, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			p.onBlock()
			return false
		}
		p.n, p.err = int(n), err
		return true
	}
}

// fill splices up to want bytes from the socket into the empty pipe,
// waiting for the socket as needed (with onBlock run before each wait),
// and returns how many it moved. The
// pipe is drained after every fill, so it always has room and EAGAIN can
// only mean the socket has nothing yet.
func (p *pipeIn) fill(want int) (int, error) {
	p.want, p.n, p.err = min(want, p.size), 0, nil
	if err := p.rc.Read(p.fn); err != nil {
		return 0, err
	}
	switch {
	case p.err != nil:
		return 0, p.err
	case p.n == 0:
		return 0, io.ErrUnexpectedEOF
	}
	return p.n, nil
}

// spliceIntoExport moves the next n payload bytes from the socket into the
// export at off. A backend error (werr) leaves the stream in step; a
// socket error (rerr) does not.
func (c *conn) spliceIntoExport(off int64, n int) (werr, rerr error) {
	p, err := c.openPipe()
	if err != nil {
		c.log.Debug("splice unavailable; copying", "err", err)
		c.noSplice = true
		return c.copyIntoExport(nil, off, n)
	}
	for n > 0 {
		c.payloadClock() // the last WriteFromPipe was the server's time
		got, err := c.src.splice(p, n)
		if errors.Is(err, unix.EINVAL) { // a socket that cannot splice; nothing moved
			c.log.Debug("socket cannot splice; copying", "err", err)
			c.noSplice = true
			return c.copyIntoExport(nil, off, n)
		}
		if err != nil {
			return nil, fmt.Errorf("splice write payload: %w", err)
		}
		moved, err := c.exp.pipeWriter.WriteFromPipe(p.r, off, got)
		if err != nil {
			// Whatever the backend refused is still in the pipe: write it
			// the ordinary way, which reports a real error and rescues a
			// filesystem that cannot splice.
			werr, rerr = c.drainPipe(p, off+int64(moved), got-moved)
			if rerr != nil || werr != nil {
				return c.discardAfter(werr, rerr, n-got)
			}
			c.log.Debug("splice into export failed; copying from now on", "err", err)
			c.noSplice = true
			return c.copyIntoExport(nil, off+int64(got), n-got)
		}
		off += int64(got)
		n -= got
	}
	return nil, nil
}

// discardAfter reads and drops the rest of a payload after a backend
// error, so that the next request header is where the client put it.
func (c *conn) discardAfter(werr, rerr error, rest int) (error, error) {
	if rerr != nil {
		return werr, rerr
	}
	if err := c.discardPayload(rest); err != nil {
		return werr, fmt.Errorf("skip failed write payload: %w", err)
	}
	return werr, nil
}

// drainPipe reads n bytes out of the pipe through the reader's spare
// buffer and writes them to the export at off with WriteAt.
func (c *conn) drainPipe(p *pipeIn, off int64, n int) (werr, rerr error) {
	werr, rerr = c.copyChunks(nil, func(b []byte) error {
		_, err := io.ReadFull(pipeReader(p.r), b)
		return err
	}, off, n)
	if rerr != nil {
		rerr = fmt.Errorf("drain splice pipe: %w", rerr)
	}
	return werr, rerr
}

// pipeReader reads a pipe's read end.
type pipeReader int

func (r pipeReader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n == 0 && err == nil {
			return 0, io.EOF
		}
		return max(n, 0), err
	}
}
