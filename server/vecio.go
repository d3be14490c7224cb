package server

import (
	"errors"
	"io"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// vecIO moves bytes between a plain socket and a list of slices with
// scatter-gather system calls. Its state lives in the struct, so that the
// RawConn callback is a method value made once and a transfer allocates
// nothing. It makes the system calls itself, not unix.Readv and unix.Writev:
// under the race detector those report the kernel's access to the slices
// as a Go access, and memory a backend lends (backend.Viewer,
// backend.WriteViewer) is read and written by the kernel alone.
//
// On a socket the standard library polls (every net.Conn it makes) the
// calls are recvmsg(2) and sendmsg(2) with MSG_DONTWAIT, made with
// RawSyscall, without telling the scheduler. MSG_DONTWAIT makes each call
// non-blocking whatever the descriptor's O_NONBLOCK flag (which anyone
// holding a copy of the descriptor may clear), so a call never waits: it
// only copies what the socket holds or has room for (at most the 1 MiB
// send buffer or a payload), as a memmove would. A scheduler-aware call
// costs more than that bookkeeping: each one made while the whole process
// was idle wakes the runtime's monitor thread (sysmon), which then polls
// every 20 µs for a while. A server that idles between a client's requests
// is in that state at nearly every request, and on a virtual machine each
// of those wake-ups is a context switch taken from the client
// (docs/performance.md). Anything else (an *os.File handed to ServeConn,
// blocking or not a socket) gets ordinary readv(2) and writev(2), so that
// a wait for the client never holds a P.
//
// A vecIO belongs to one goroutine at a time: the reader owns the
// connection's readv, whoever holds the reply writer's busy flag its
// writev.
type vecIO struct {
	write bool // writev, else readv
	raw   bool // a polled socket: raw sendmsg or recvmsg (see above)
	msg   unix.Msghdr
	wait  bool // on EAGAIN, let the runtime wait for the socket
	rc    syscall.RawConn
	all   []unix.Iovec // reused between transfers
	vecs  []unix.Iovec // what the call in progress moves
	n     uintptr      // its result
	errno unix.Errno
	fn    func(fd uintptr) bool
	// onBlock, if set, runs each time a waiting call finds the socket
	// full (or empty), just before the runtime waits for it.
	onBlock func()
	// poller, if set on a raw read, decides whether a read that finds
	// the socket empty polls it before the runtime waits (pollAgain).
	poller emptyPoller
}

// An emptyPoller decides whether a read that finds the socket empty tries
// it again for up to pollFor, and learns whether that found anything
// (idlepoll.go).
type emptyPoller interface {
	startPoll() bool
	endPoll(hit bool)
}

// pollAgain reports whether a read that found the socket empty tries it
// again: as v.poller allows at the first empty try, whose time it keeps
// in since, and then until pollFor has passed. Before each new try it
// yields the CPU (sched_yield(2)), so that a client that waits for this
// CPU runs and sends its request rather than waiting for the poll to end:
// without the yield, a client and server sharing one vCPU lost 1-2 % at
// queue depth 1 (docs/performance.md). With nothing else to run the yield
// returns at once. It is a raw call like the recvmsg beside it: the
// scheduler need not know of a call that either returns at once or runs
// other threads for a moment.
func (v *vecIO) pollAgain(since *time.Time) bool {
	switch {
	case v.poller == nil:
		return false
	case since.IsZero():
		if !v.poller.startPoll() {
			return false
		}
		*since = time.Now()
	case time.Since(*since) >= pollFor:
		v.poller.endPoll(false)
		return false
	}
	unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	return true
}

func newVecIO(rc syscall.RawConn, write bool) *vecIO {
	v := &vecIO{rc: rc, write: write, raw: pollableSocket(rc)}
	v.fn = v.call
	return v
}

// pollableSocket reports whether the descriptor behind rc is a socket in
// non-blocking mode: one the runtime's poller waits on.
func pollableSocket(rc syscall.RawConn) bool {
	ok := false
	rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK == 0 {
			return
		}
		_, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		ok = err == nil
	})
	return ok
}

// transferOnce makes the one system call of call.
func (v *vecIO) transferOnce(fd uintptr) (uintptr, unix.Errno) {
	if !v.raw {
		trap := uintptr(unix.SYS_READV)
		if v.write {
			trap = unix.SYS_WRITEV
		}
		n, _, errno := unix.Syscall(trap, fd, uintptr(unsafe.Pointer(&v.vecs[0])), uintptr(len(v.vecs)))
		return n, errno
	}
	v.msg.Iov = &v.vecs[0]
	v.msg.SetIovlen(len(v.vecs))
	trap, flags := uintptr(unix.SYS_RECVMSG), uintptr(unix.MSG_DONTWAIT)
	if v.write {
		trap, flags = unix.SYS_SENDMSG, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL
	}
	n, _, errno := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&v.msg)), flags)
	v.msg.Iov = nil
	return n, errno
}

// call is the RawConn callback: one system call, retried on EINTR. It
// returns false on EAGAIN when v.wait is set, so the runtime waits, after
// polling the socket as pollAgain allows.
func (v *vecIO) call(fd uintptr) bool {
	var polling time.Time // since the first empty try, if polling
	for {
		n, errno := v.transferOnce(fd)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN && v.wait && v.pollAgain(&polling):
			continue
		case errno == unix.EAGAIN && v.wait:
			if v.onBlock != nil {
				v.onBlock()
			}
			return false
		}
		if !polling.IsZero() {
			v.poller.endPoll(true)
		}
		v.n, v.errno = n, errno
		return true
	}
}

// once runs one call on at most maxIovecs iovecs and returns the bytes
// moved.
func (v *vecIO) once(vecs []unix.Iovec) (int, error) {
	v.vecs, v.n, v.errno = vecs[:min(len(vecs), maxIovecs)], 0, 0
	var err error
	if v.write {
		err = v.rc.Write(v.fn)
	} else {
		err = v.rc.Read(v.fn)
	}
	v.vecs = nil
	switch {
	case err != nil:
		return 0, err
	case v.errno == unix.EAGAIN: // only when not waiting
		return 0, nil
	case v.errno != 0:
		return 0, v.errno
	case v.n == 0 && !v.write:
		return 0, io.ErrUnexpectedEOF
	}
	return int(v.n), nil
}

// transfer moves all of iov, waiting for the socket as needed.
func (v *vecIO) transfer(iov [][]byte) error {
	v.wait = true
	vecs := v.load(iov)
	defer v.unload()
	for len(vecs) > 0 {
		n, err := v.once(vecs)
		if err != nil {
			return err
		}
		vecs = advance(vecs, n)
	}
	return nil
}

// readSome reads at least one byte into b, waiting for the socket as
// needed: io.Reader's Read, with io.EOF for a socket the client closed.
func (v *vecIO) readSome(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	v.wait = true
	vecs := v.load([][]byte{b})
	defer v.unload()
	n, err := v.once(vecs)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

// try moves as much of iov as the socket takes now, in one call.
func (v *vecIO) try(iov [][]byte) (int, error) {
	v.wait = false
	vecs := v.load(iov)
	defer v.unload()
	if len(vecs) == 0 {
		return 0, nil
	}
	return v.once(vecs)
}

// load fills v.all with the iovecs of the non-empty slices of iov.
func (v *vecIO) load(iov [][]byte) []unix.Iovec {
	all := v.all[:0]
	for _, b := range iov {
		if len(b) > 0 {
			e := unix.Iovec{Base: &b[0]}
			e.SetLen(len(b))
			all = append(all, e)
		}
	}
	v.all = all
	return all
}

// unload drops the iovecs, which may point into a backend's memory.
func (v *vecIO) unload() {
	clear(v.all)
	v.all = v.all[:0]
}

// maxIovecs bounds the iovecs of one call (IOV_MAX is 1024 on Linux).
const maxIovecs = 1024

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
