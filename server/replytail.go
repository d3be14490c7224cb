package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"golang.org/x/sys/unix"
)

// Replies whose data follows their header only as it is read or sent:
// READs planned PathReadStreamed (larger than a buffer, or no buffer to
// be had) and PathReadSendfile. The owner of the socket (reply.go) sends
// each alone and may wait for the socket meanwhile.
//
// A reply of this kind may still fail after its header went out. Under
// structured replies its data chunk is therefore not final (op.encode),
// and the reply ends with a NONE chunk, the trailer, sent with whatever is
// written next so it costs no system call of its own; or, on a failure,
// with the rest of the chunk padded with zeros and an ERROR_OFFSET chunk,
// and the connection carries on (proto.md "NBD_CMD_READ": the server "MUST
// still complete the transmission of any current chunk"). Under simple
// replies a failure after the header can only end in a hard disconnect
// (proto.md "Simple reply message"), counted in ExportStats.Aborted.

// sendTail sends o, a reply that sends alone. o counts as sent once its
// trailer is out.
func (w *replyWriter) sendTail(o *op) {
	if o.plan.data == PathReadSendfile {
		w.sendFile(o)
	} else {
		w.streamRead(o)
	}
	w.ended(o)
}

// ended places o, a reply that sent alone, once its data is out: among
// the replies sent, or, with its trailer still due, as the trailer's.
func (w *replyWriter) ended(o *op) {
	if w.trailerDue {
		// Not finished until its NONE chunk is out: a DISC or a shutdown
		// waits for finished requests, then hangs up.
		w.trailerOp = o
	} else {
		w.sent = append(w.sent, o)
	}
}

// sendFile sends a READ planned PathReadSendfile: the header (simple, or
// an OFFSET_DATA chunk not yet final), then the data with sendfile(2).
// The data was not read beforehand, so it may still fail: endData ends
// the reply either way.
func (w *replyWriter) sendFile(o *op) {
	w.writev2(o.hdr[:o.hdrLen], nil)
	w.sendFileData(o, 0)
}

// sendFileData sends the data of o, a sendfile READ whose header is out,
// from done bytes into it, and ends the reply (endData).
func (w *replyWriter) sendFileData(o *op, done int64) {
	if w.failed.Load() {
		return
	}
	sent, ok, err := w.sendfileRange(int64(o.req.Offset)+done, int64(o.req.Length)-done)
	if !ok {
		err = errors.New("sendfile not possible on this connection")
	}
	w.endData(o, done+sent, err)
}

// streamRead sends a READ planned PathReadStreamed chunk by chunk through
// its buffer, whose first chunk was read when it ran (exec), or through
// the writer's spare when it had none. Under structured replies each
// chunk is its own OFFSET_DATA chunk (streamChunks). A DF READ, which must
// not be fragmented, and a simple reply are one header and then the data;
// the stream strategy sends what follows the first chunk of a file export
// with sendfile, cached or not.
func (w *replyWriter) streamRead(o *op) {
	c := w.c
	off, n := int64(o.req.Offset), int(o.req.Length)
	chunk := o.buf
	if chunk == nil {
		chunk = c.spares.forWriter()
	}
	first := chunk[:min(len(chunk), n)]
	if o.buf == nil { // nothing was read yet
		if err := readFull(c.exp.Backend, first, off); err != nil {
			o.fail(err)
			o.encode(c.format)
			w.writev2(o.hdr[:o.hdrLen], o.extra)
			return
		}
	}
	if c.format.chunked(protocol.CmdRead) && o.req.Flags&protocol.CmdFlagDF == 0 {
		w.streamChunks(o, chunk, first)
		return
	}
	w.writev2(o.hdr[:o.hdrLen], first)
	done := len(first)
	if !w.failed.Load() && done < n {
		if sent, ok, err := w.sendfileRange(off+int64(done), int64(n-done)); ok {
			w.endData(o, int64(done)+sent, err)
			return
		}
	}
	for done < n && !w.failed.Load() {
		part := chunk[:min(len(chunk), n-done)]
		if err := readFull(c.exp.Backend, part, off+int64(done)); err != nil {
			w.endData(o, int64(done), err)
			return
		}
		w.writev2(part, nil)
		done += len(part)
	}
	w.endData(o, int64(done), nil)
}

// streamChunks sends a structured READ as one OFFSET_DATA chunk per
// buffer, each read before it is sent; the last one is final. A failure
// after the first chunk is reported in an ERROR_OFFSET chunk that ends
// the reply.
func (w *replyWriter) streamChunks(o *op, chunk, data []byte) {
	c := w.c
	off, n := int64(o.req.Offset), int64(o.req.Length)
	for done := int64(0); ; {
		last := done+int64(len(data)) == n
		flags := protocol.ReplyFlag(0)
		if last {
			flags = protocol.ReplyFlagDone
		}
		k := c.format.putData(w.chunkHdr[:], &o.req, flags, uint64(off+done), len(data))
		w.writev2(w.chunkHdr[:k], data)
		done += int64(len(data))
		if last || w.failed.Load() {
			return
		}
		data = chunk[:min(int64(len(chunk)), n-done)]
		if err := readFull(c.exp.Backend, data, off+done); err != nil {
			w.sendErrorOffset(o, off+done, err)
			return
		}
	}
}

// endData ends a reply whose data went out after its header, once done
// bytes of it are out, or the data failed there with err.
func (w *replyWriter) endData(o *op, done int64, err error) {
	c := w.c
	off, n := int64(o.req.Offset), int64(o.req.Length)
	if done >= n {
		err = nil // all the data went out: an error after it changes nothing
	}
	switch {
	case w.failed.Load():
	case err == nil:
		if c.format.chunked(protocol.CmdRead) {
			w.trailerLen = c.format.putChunk(w.trailer[:], &o.req, protocol.ReplyFlagDone, protocol.ReplyTypeNone, 0)
			w.trailerDue = true // sent with whatever is written next
		}
	case errors.Is(err, os.ErrDeadlineExceeded): // sendfile met the stall deadline
		w.fail(err)
	case c.format.chunked(protocol.CmdRead):
		w.pad(n - done)
		w.sendErrorOffset(o, off+done, err)
	default:
		c.counts.aborted.Add(1)
		w.fail(fmt.Errorf("%v failed after its reply header was sent: %w", protocol.CmdRead, err))
		c.requestFailed(o.req, Errno(err), fmt.Errorf("at offset %d, after the reply header was sent (a simple reply cannot carry the error: disconnecting): %w", off+done, err))
	}
}

// flushTrailer sends a reply's final NONE chunk if nothing written since
// has carried it (see endData and writev).
func (w *replyWriter) flushTrailer() {
	if w.trailerDue {
		w.writev(nil)
	}
}

// trailerSent finishes the READ whose trailer has just been written (or
// will never be: the connection failed), and what was sent before it,
// at once: the reader may be waiting for its slot and bytes.
func (w *replyWriter) trailerSent() {
	if o := w.trailerOp; o != nil {
		w.trailerOp = nil
		w.sent = append(w.sent, o)
		w.finishSent()
	}
}

// sendErrorOffset ends o's structured READ reply with an ERROR_OFFSET
// chunk saying the data failed at offset at (proto.md
// "NBD_REPLY_TYPE_ERROR_OFFSET"); the connection carries on.
func (w *replyWriter) sendErrorOffset(o *op, at int64, err error) {
	errno := replyErrno(o.req, Errno(err))
	w.c.counts.failed(o.req, o.plan.data, errno)
	w.c.requestFailed(o.req, errno, fmt.Errorf("at offset %d, after part of the data was sent: %w", at, err))
	msg := protocol.AppendErrorChunk(nil, errno, clientMessage(err), true, uint64(at))
	k := w.c.format.putChunk(w.chunkHdr[:], &o.req, protocol.ReplyFlagDone, protocol.ReplyTypeErrorOffset, len(msg))
	w.writev2(w.chunkHdr[:k], msg)
}

// pad writes n zero bytes, the rest of a data chunk that failed part way
// (endData).
func (w *replyWriter) pad(n int64) {
	for n > 0 && !w.failed.Load() {
		part := backend.Zeroes(n)
		w.writev2(part, nil)
		n -= int64(len(part))
	}
}

// sendfileRange sends n bytes of the export's file at off to the socket
// with sendfile(2), waiting for the socket as needed. It reports how many
// bytes went out, and ok false, having sent nothing, when the connection
// is not a plain socket or the export not a file.
func (w *replyWriter) sendfileRange(off, n int64) (sent int64, ok bool, err error) {
	if w.c.exp.file == nil || w.out == nil {
		return 0, false, nil
	}
	w.armStallDeadline()
	sent, err = w.files.send(w.c.exp.file.File(), off, n, true)
	return sent, true, err
}

// fileSender moves a range of a file to the socket with sendfile(2). Its
// state lives in the struct, as vecIO's does, so that the RawConn
// callbacks are method values made once and a send allocates nothing
// but the file's RawConn. It belongs to whoever holds the reply writer's
// busy flag.
//
// When neither side can make the call wait (raw: a socket the runtime
// polls, which returns EAGAIN when full, and a file in memory, which
// never waits on a device), sendfile is made with RawSyscall, without
// telling the scheduler, as vecIO makes its calls and for the same
// reason: a scheduler-aware call made while the process was idle wakes
// the runtime's monitor thread, whose polling then costs context
// switches taken from the client (docs/performance.md, "File serial read
// after the direct, raw sendfile"). A file on a disk gets the
// scheduler-aware call: evicted pages would make it wait for the device.
type fileSender struct {
	out       syscall.RawConn
	raw       bool
	infd      int
	off, left int64
	wait      bool // on EAGAIN, let the runtime wait for the socket
	onBlock   func()
	err, werr error
	withFile  func(fd uintptr)
	call      func(fd uintptr) bool
}

// newFileSender makes the sender of a socket, out; inMemory says the
// export's file never waits on a device (backend.NonBlocker).
func newFileSender(out syscall.RawConn, inMemory bool, onBlock func()) *fileSender {
	s := &fileSender{out: out, raw: inMemory && pollableSocket(out), onBlock: onBlock}
	s.withFile, s.call = s.control, s.sendfile
	return s
}

// send sends n bytes of f at off and returns how many went out. With
// wait it waits for the socket as needed, running onBlock before each
// wait; without, it stops when the socket is full.
func (s *fileSender) send(f *os.File, off, n int64, wait bool) (int64, error) {
	in, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	s.off, s.left, s.wait, s.err, s.werr = off, n, wait, nil, nil
	cerr := in.Control(s.withFile)
	return n - s.left, errors.Join(cerr, s.werr, s.err)
}

func (s *fileSender) control(infd uintptr) {
	s.infd = int(infd)
	s.werr = s.out.Write(s.call)
}

// sendfile is the socket's RawConn callback: sendfile until the range is
// out, the socket is full or a call fails. It returns false on EAGAIN
// when waiting, so the runtime waits for the socket.
func (s *fileSender) sendfile(outfd uintptr) bool {
	for s.left > 0 {
		sent, err := s.sendfileOnce(outfd)
		s.left -= int64(max(sent, 0))
		switch {
		case errors.Is(err, unix.EAGAIN):
			if !s.wait {
				return true
			}
			if s.onBlock != nil {
				s.onBlock()
			}
			return false
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			s.err = err
			return true
		case sent == 0:
			s.err = io.ErrUnexpectedEOF // the file is shorter than the export
			return true
		}
	}
	return true
}

// sendfileOnce makes one sendfile(2) call of at most 1 GiB.
func (s *fileSender) sendfileOnce(outfd uintptr) (int, error) {
	count := uintptr(min(s.left, 1<<30))
	if !s.raw {
		return unix.Sendfile(int(outfd), s.infd, &s.off, int(count))
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDFILE, outfd, uintptr(s.infd), uintptr(unsafe.Pointer(&s.off)), count, 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}
