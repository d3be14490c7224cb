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
// the zero-copy path of the stream strategy. It reports how many bytes
// went out, and ok false, having sent nothing, when either side does not
// allow it (TLS, net.Pipe, wrappers).
func (w *replyWriter) sendfileRange(b any, off, n int64) (sent int64, ok bool, err error) {
	fb, ok := b.(fileBacked)
	if !ok || w.c.tls {
		return 0, false, nil
	}
	sc, ok := w.c.rwc.(syscall.Conn)
	if !ok {
		return 0, false, nil
	}
	out, err := sc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	in, err := fb.File().SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	w.armStallDeadline()
	var serr error
	cerr := in.Control(func(infd uintptr) {
		sent, serr = sendfileAll(out, int(infd), off, n, w.rearmStallDeadline)
	})
	return sent, true, errors.Join(cerr, serr)
}

// sendFile sends a READ reply marked by conn.sendsFile: the header (simple,
// or an OFFSET_DATA chunk not yet final), then the data with sendfile(2).
// The data was not read beforehand, so it may still fail: endData ends
// the reply either way.
func (w *replyWriter) sendFile(o *op) {
	w.writev2(o.hdr[:o.hdrLen], nil)
	if w.failed.Load() {
		return
	}
	sent, ok, err := w.sendfileRange(w.c.exp.Backend, int64(o.req.Offset), int64(o.req.Length))
	if !ok {
		err = errors.New("sendfile not possible on this connection")
	}
	w.endData(o, sent, err)
}

// sendfileAll loops sendfile until n bytes are out, waiting for the socket
// to drain when it is full, with onBlock run before each wait. It returns
// the bytes sent.
func sendfileAll(out syscall.RawConn, infd int, off, n int64, onBlock func()) (int64, error) {
	var serr error
	left := n
	werr := out.Write(func(outfd uintptr) bool {
		for left > 0 {
			sent, err := unix.Sendfile(int(outfd), infd, &off, int(min(left, 1<<30)))
			left -= int64(max(sent, 0))
			switch {
			case errors.Is(err, unix.EAGAIN):
				onBlock()
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
	return n - left, errors.Join(werr, serr)
}
