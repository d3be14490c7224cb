package server

import (
	"fmt"
	"io"
	"unsafe"

	"github.com/nbdd/nbdd/protocol"
	"golang.org/x/sys/unix"
)

// WRITEs to backends that never block are done on the reader without a
// buffer from the strategy: the payload goes from the read buffer, or from
// the socket itself, into the export.
//
//   - A payload already in the read buffer is written from there with
//     WriteAt: one copy, and no buffer to take, fill and give back.
//   - Otherwise, when the backend lends its memory (backend.WriteViewer)
//     and the connection is a plain socket, what is buffered is written as
//     above and the rest is read with readv(2) straight into the export's
//     pages: one copy, made by the kernel, whatever the payload's size.
//
// Either way the write is complete before the next request is read, like
// the inline requests of start.

// writesInPlace reports whether o's payload can be written without a
// buffer.
func (c *conn) writesInPlace(o *op) bool {
	if !c.exp.nonBlocking {
		return false
	}
	if int(o.req.Length) <= c.br.Buffered() {
		return true
	}
	return c.exp.writeViewer != nil && c.rawIn != nil
}

// writeInPlace writes o's payload into the export and holds its reply. Only
// a socket error is returned; the connection is then out of step.
func (c *conn) writeInPlace(o *op) error {
	off, n := int64(o.req.Offset), int(o.req.Length)
	fua := o.req.Flags&protocol.CmdFlagFUA != 0
	k := min(n, c.br.Buffered())
	var err error
	if k > 0 || n == 0 {
		head, _ := c.br.Peek(k)
		err = c.write(head, off, fua && k == n)
		c.br.Discard(k)
	}
	if k < n {
		c.release() // about to wait for the client
		rerr := c.readIntoExport(off+int64(k), n-k)
		if rerr != nil {
			c.finish(o)
			return fmt.Errorf("read write payload: %w", rerr)
		}
		if err == nil {
			err = c.afterFUA(nil, fua)
		}
	}
	o.fail(err)
	o.encode(c.structured)
	c.hold(o)
	return nil
}

// readIntoExport reads n bytes from the socket into the export at off.
func (c *conn) readIntoExport(off int64, n int) error {
	wv := c.exp.writeViewer
	defer wv.CommitWriteView(off, int64(n))
	iov, err := wv.AppendWriteView(c.inIov[:0], off, int64(n))
	defer func() {
		clear(iov)
		c.inIov = iov[:0]
	}()
	if err != nil {
		return err // validated already: only a broken backend gets here
	}
	return c.readv(iov)
}

// maxIovecs bounds the iovecs of one readv (IOV_MAX is 1024 on Linux).
const maxIovecs = 1024

// readv fills iov from the socket, waiting for data through the runtime's
// poller.
func (c *conn) readv(iov [][]byte) error {
	all := c.inVecs[:0]
	for _, b := range iov {
		if len(b) > 0 {
			v := unix.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			all = append(all, v)
		}
	}
	defer func() {
		clear(all) // the iovecs point into the export
		c.inVecs, c.rvecs = all[:0], nil
	}()
	vecs := all
	for len(vecs) > 0 {
		c.rvecs = vecs[:min(len(vecs), maxIovecs)]
		if err := c.rawIn.Read(c.readvFn); err != nil {
			return err
		}
		switch {
		case c.rerrno != 0:
			return c.rerrno
		case c.rn == 0:
			return io.ErrUnexpectedEOF
		}
		vecs = advance(vecs, int(c.rn))
	}
	return nil
}

// readvNow is the RawConn callback of readv (a method value made once, so
// a WRITE allocates nothing). It returns false on EAGAIN so that the
// runtime waits for the socket. It uses the raw system call, not
// unix.Readv: under the race detector that one reports the kernel's write
// into the export as a Go write, and memory lent by a WriteViewer is
// written by the kernel alone (see backend.WriteViewer).
func (c *conn) readvNow(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&c.rvecs[0])), uintptr(len(c.rvecs)))
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		c.rn, c.rerrno = n, errno
		return true
	}
}

// advance drops the first n bytes from vecs.
func advance(vecs []unix.Iovec, n int) []unix.Iovec {
	for n > 0 && len(vecs) > 0 {
		l := int(vecs[0].Len)
		if n < l {
			vecs[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(vecs[0].Base), n))
			vecs[0].SetLen(l - n)
			return vecs
		}
		n -= l
		vecs = vecs[1:]
	}
	return vecs
}
