package server

import (
	"errors"
	"unsafe"

	"github.com/nbdd/nbdd/protocol"
	"golang.org/x/sys/unix"
)

// direct sends o's reply from the calling goroutine with one writev that
// does not wait. When the socket takes all of it, which is the usual case
// for a reply that fits in the socket buffer, the reply left without a
// goroutine hand-off (the cost that dominates small requests at low queue
// depth). Otherwise the rest is left to the writer goroutine, so the
// caller, often the reader, never waits on a slow client. The caller holds
// w.busy; direct releases it.
func (w *replyWriter) direct(o *op) {
	iov := appendReply(w.iov[:0], o)
	n, err := w.tryWritev(iov)
	switch {
	case err != nil:
		w.fail(err)
		w.c.finish(o)
	case n == iovLen(iov):
		w.c.finish(o)
	default:
		w.carry = appendRest(w.carry[:0], iov, n)
		w.carryOp = o
	}
	clear(iov)
	w.iov = iov[:0]
	w.mu.Lock()
	w.busy = false
	pending := len(w.queue) > 0 || w.carryOp != nil
	w.mu.Unlock()
	if pending {
		w.kick()
	}
}

// directMax is the largest reply sent directly. A larger one would rarely
// fit in the socket buffer at once, and a partial write followed by a
// hand-off costs more than the hand-off alone.
const directMax = 64 << 10

// small reports whether o's reply may be sent directly.
func (o *op) small() bool {
	return !o.stream && (o.req.Type != protocol.CmdRead || o.err != nil || o.req.Length <= directMax)
}

// tryWritev writes as much of iov as the socket takes now, without
// waiting for it to drain.
func (w *replyWriter) tryWritev(iov [][]byte) (int, error) {
	if w.failed.Load() {
		return 0, errors.New("connection already failed")
	}
	vecs := w.iovecs[:0]
	for _, b := range iov {
		if len(b) > 0 {
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			vecs = append(vecs, v)
		}
	}
	w.vecs, w.wn, w.werrno = vecs, 0, 0
	err := w.raw.Write(w.writevFn)
	n, errno := w.wn, w.werrno
	clear(vecs)
	w.iovecs, w.vecs = vecs[:0], nil
	switch {
	case err != nil:
		return 0, err
	case errno == unix.EAGAIN || errno == unix.EINTR:
		return 0, err
	case errno != 0:
		return 0, errors.Join(err, errno)
	}
	return int(n), err
}

// writevNow is the RawConn callback of tryWritev (a method value made
// once, so a reply allocates nothing). It uses the raw system call, not
// unix.Writev: under the race detector that one reports the kernel's read
// of the iovecs as a Go read, and a READ lent from backend memory is copied
// by the kernel alone, like the writev of net.Buffers.
func (w *replyWriter) writevNow(fd uintptr) bool {
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.vecs[0])), uintptr(len(w.vecs)))
	w.wn, w.werrno = n, errno
	return true // never wait for the socket to become writable
}

// sendCarry finishes a direct reply the socket took only part of. It runs
// on the writer goroutine, holding w.busy, before anything else is sent.
func (w *replyWriter) sendCarry() {
	if w.carryOp == nil {
		return
	}
	w.writev(w.carry)
	o := w.carryOp
	clear(w.carry)
	w.carry, w.carryOp = w.carry[:0], nil
	w.c.finish(o)
}

// appendReply appends the slices of o's reply: header, structured
// payload, data.
func appendReply(iov [][]byte, o *op) [][]byte {
	if len(o.iov) > 0 {
		return append(iov, o.iov...)
	}
	iov = append(iov, o.hdr[:o.hdrLen])
	if len(o.extra) > 0 {
		iov = append(iov, o.extra)
	}
	if len(o.data) > 0 {
		iov = append(iov, o.data)
	}
	return append(iov, o.views...)
}

func iovLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

// appendRest appends what is left of iov after its first n bytes.
func appendRest(dst, iov [][]byte, n int) [][]byte {
	for _, b := range iov {
		if n >= len(b) {
			n -= len(b)
			continue
		}
		dst = append(dst, b[n:])
		n = 0
	}
	return dst
}
