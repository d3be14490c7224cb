package server

import (
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileBacked is implemented by backends whose data is a file the kernel
// can send without a copy through user space (backend.File).
type fileBacked interface {
	File() *os.File
}

// cachedFile is a file backend that tells whether a range is in the page
// cache (backend.File): such READs are sent with sendfile without waiting
// on a device.
type cachedFile interface {
	fileBacked
	Cached(off, n int64) bool
}

// sendfileRange sends n bytes of f at off to the socket with sendfile(2),
// the zero-copy path of the stream strategy. It reports false, having sent
// nothing, when either side does not allow it (TLS, net.Pipe, wrappers).
func (w *replyWriter) sendfileRange(b any, off, n int64) (bool, error) {
	fb, ok := b.(fileBacked)
	if !ok || w.c.tls {
		return false, nil
	}
	sc, ok := w.c.rwc.(syscall.Conn)
	if !ok {
		return false, nil
	}
	out, err := sc.SyscallConn()
	if err != nil {
		return false, nil
	}
	in, err := fb.File().SyscallConn()
	if err != nil {
		return false, nil
	}
	w.armStallDeadline()
	var serr error
	cerr := in.Control(func(infd uintptr) {
		serr = sendfileAll(out, int(infd), off, n)
	})
	return true, errors.Join(cerr, serr)
}

// sendFile sends a READ reply marked by conn.sendsFile: the header (simple,
// or one OFFSET_DATA chunk), then the data with sendfile(2). The data was
// not read beforehand, so a failure can only end in a disconnect.
func (w *replyWriter) sendFile(o *op) {
	c := w.c
	w.writev2(o.hdr[:o.hdrLen], nil)
	if w.failed.Load() {
		return
	}
	off, n := int64(o.req.Offset), int64(o.req.Length)
	sent, err := w.sendfileRange(c.exp.Backend, off, n)
	if !sent {
		err = errors.New("sendfile not possible on this connection")
	}
	if err != nil {
		streamAborts.Add(1)
		w.fail(err)
		c.log.Warn("sendfile failed mid-reply; disconnecting", "offset", off, "len", n, "err", err)
	}
}

// sendfileAll loops sendfile until n bytes are out, waiting for the socket
// to drain when it is full.
func sendfileAll(out syscall.RawConn, infd int, off, n int64) error {
	var serr error
	werr := out.Write(func(outfd uintptr) bool {
		for n > 0 {
			sent, err := unix.Sendfile(int(outfd), infd, &off, int(min(n, 1<<30)))
			n -= int64(max(sent, 0))
			switch {
			case errors.Is(err, unix.EAGAIN):
				return false // wait until the socket is writable
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				serr = err
				return true
			case sent == 0:
				serr = io.ErrUnexpectedEOF // the file is shorter than the export
				return true
			}
		}
		return true
	})
	return errors.Join(werr, serr)
}
