package server

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// replyWriter is the one goroutine that writes replies on a connection.
// Requests finish in any order and enqueue their ops; the writer takes
// everything queued at once and sends it with a single vectored write
// (writev), so replies that are ready together share one system call.
type replyWriter struct {
	c    *conn
	wake chan struct{} // capacity 1: "the queue is not empty"
	quit chan struct{}
	done chan struct{}

	mu    sync.Mutex
	queue []*op // guarded by mu
	// busy is set while a goroutine owns the socket: the writer goroutine
	// sending a batch, or a request goroutine sending its own reply
	// directly (see direct.go). Guarded by mu.
	busy bool

	// Owned by whoever holds busy.
	spare    []*op
	iov      [][]byte
	scratch  []byte // coalesces replies over TLS, which has no writev
	carry    [][]byte
	carryOps []*op                // direct replies the socket took only part of; sent first
	iov2     [2][]byte            // scratch of writev2
	chunkHdr [maxReplyHeader]byte // a streamed READ's chunk header
	out      *vecIO               // writev on a plain socket, else nil
	armed    bool                 // a stall deadline is set (armStallDeadline)
	// trailer is the NONE chunk that ends a READ whose data chunk went
	// out unfinished (endData); trailerDue until it is sent, with the
	// next writev. withTrailer is that writev's scratch.
	trailer     [protocol.ChunkHeaderSize]byte
	trailerDue  bool
	trailerOp   *op // the READ the trailer ends: finished once it is sent
	withTrailer [][]byte
	failed      atomic.Bool
}

// streamAborts counts READs cut off by a hard disconnect because the
// backend failed after the reply header had gone out.
var streamAborts atomic.Int64

func newReplyWriter(c *conn) *replyWriter {
	w := &replyWriter{c: c, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	return w
}

// enqueue hands o to the writer; see enqueueAll.
func (w *replyWriter) enqueue(o *op) {
	one := [1]*op{o}
	w.enqueueAll(one[:])
}

// enqueueAll hands the replies of ops to the writer. It never blocks:
// when the socket is free it tries to send them at once without waiting
// (see direct.go), and otherwise queues them for the writer goroutine.
func (w *replyWriter) enqueueAll(ops []*op) {
	w.mu.Lock()
	if w.out != nil && !w.busy && len(w.queue) == 0 && len(w.carryOps) == 0 && allSmall(ops) {
		w.busy = true
		w.mu.Unlock()
		w.direct(ops)
		return
	}
	w.queue = append(w.queue, ops...)
	busy := w.busy
	w.mu.Unlock()
	if !busy { // a busy holder sends the queue before letting go
		w.kick()
	}
}

func (w *replyWriter) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// stop ends the writer once every op has been finished.
func (w *replyWriter) stop() {
	close(w.quit)
	<-w.done
}

func (w *replyWriter) loop() {
	defer close(w.done)
	for {
		select {
		case <-w.wake:
			w.drain()
		case <-w.quit:
			w.drain()
			return
		}
	}
}

// drain writes batches until the queue is empty. It leaves the socket to
// a goroutine that holds it; that one sends the queue before letting go.
func (w *replyWriter) drain() {
	w.mu.Lock()
	if w.busy || (len(w.queue) == 0 && len(w.carryOps) == 0) {
		w.mu.Unlock()
		return
	}
	w.busy = true
	w.mu.Unlock()
	w.drainOwned()
}

// drainOwned writes batches until the queue is empty, then lets go of the
// socket. The caller holds w.busy.
func (w *replyWriter) drainOwned() {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 && len(w.carryOps) == 0 {
			w.disarmStallDeadline() // before direct writes may start
			w.busy = false
			w.mu.Unlock()
			return
		}
		batch := w.queue
		w.queue = w.spare[:0]
		w.mu.Unlock()
		w.sendCarry()
		w.writeBatch(batch)
		clear(batch)
		w.spare = batch[:0]
	}
}

// armStallDeadline bounds, when Server.IdleTimeout is set, how long the
// write about to start may wait for a client that reads no replies: the
// write then fails and the connection closes (rearmStallDeadline moves it
// on while the client reads). Without it such a client
// would hold its requests' slots and buffers, and its share of the
// memory budget, for good. Each write that may wait arms it afresh, so a
// long streamed reply to a client that keeps reading never trips it.
func (w *replyWriter) armStallDeadline() {
	idle := w.c.srv.IdleTimeout
	if idle <= 0 || w.c.nc == nil {
		return
	}
	w.c.nc.SetWriteDeadline(time.Now().Add(idle))
	w.armed = true
}

// rearmStallDeadline moves an armed stall deadline to IdleTimeout from
// now. A write runs it each time it finds the socket full, having sent
// what the client made room for, so the deadline bounds how long a
// client reads nothing, not how long a large reply takes.
func (w *replyWriter) rearmStallDeadline() {
	if w.armed {
		w.c.nc.SetWriteDeadline(time.Now().Add(w.c.srv.IdleTimeout))
	}
}

// disarmStallDeadline clears the deadline before the socket is let go:
// a stale one would fail the next direct write, which never waits.
func (w *replyWriter) disarmStallDeadline() {
	if w.armed {
		w.c.nc.SetWriteDeadline(time.Time{})
		w.armed = false
	}
}

// sendOwn sends o's reply from the calling goroutine, which may block: a
// request's own goroutine, never the reader. When nobody is writing, the
// caller becomes the writer: it writes o's reply, waiting for the socket
// as needed, then whatever was queued meanwhile, without the hand-off to
// the writer goroutine whose wake-up costs a context switch (it made file
// READs cost twice go-nbd's CPU). Otherwise o is queued for the writer.
func (w *replyWriter) sendOwn(o *op) {
	w.mu.Lock()
	if w.busy || len(w.queue) > 0 || len(w.carryOps) > 0 {
		w.queue = append(w.queue, o)
		busy := w.busy
		w.mu.Unlock()
		if !busy { // a busy holder sends the queue before letting go
			w.kick()
		}
		return
	}
	w.busy = true
	w.mu.Unlock()
	one := [1]*op{o}
	w.writeBatch(one[:])
	w.drainOwned()
}

// writeBatch sends the replies of batch in order. A streamed or sendfile
// READ needs the socket to itself, so what precedes it is sent first.
func (w *replyWriter) writeBatch(batch []*op) {
	start := 0
	for i, o := range batch {
		if !o.stream && !o.sendfile {
			continue
		}
		w.send(batch[start:i])
		if o.sendfile {
			w.sendFile(o)
		} else {
			w.streamRead(o)
		}
		if w.trailerDue {
			// Not finished until its NONE chunk is out: a DISC or a
			// shutdown waits for finished requests, then hangs up.
			w.trailerOp = o
		} else {
			w.c.finish(o)
		}
		start = i + 1
	}
	w.send(batch[start:])
	w.flushTrailer()
}

// send writes the replies of ops with one writev and finishes them.
func (w *replyWriter) send(ops []*op) {
	if len(ops) == 0 {
		return
	}
	iov := w.iov[:0]
	for _, o := range ops {
		iov = appendReply(iov, o)
	}
	w.writev(iov)
	clear(iov)
	w.iov = iov[:0]
	for _, o := range ops {
		w.c.finish(o)
	}
}

// writev writes all of iov, waiting for the socket as needed. A plain
// socket gets raw writev(2) calls, which allocate nothing; TLS gets
// coalesced records; anything else (net.Pipe) a Write per slice. Empty
// slices are never written: net.Pipe and TLS would send an empty write
// (see conn.optReplyData).
func (w *replyWriter) writev(iov [][]byte) {
	if w.failed.Load() {
		w.trailerDue = false
		w.finishTrailerOp()
		return
	}
	if w.trailerDue {
		w.trailerDue = false
		iov = append(append(w.withTrailer[:0], w.trailer[:]), iov...)
		w.withTrailer = iov
	}
	w.armStallDeadline()
	var err error
	switch {
	case w.c.tls:
		err = w.writeCoalesced(iov)
	case w.out != nil:
		err = w.out.transfer(iov)
	default:
		for _, b := range iov {
			if len(b) == 0 {
				continue
			}
			if _, err = w.c.rwc.Write(b); err != nil {
				break
			}
		}
	}
	trailer := len(w.withTrailer) > 0
	if trailer { // drop its references to replies' memory
		clear(w.withTrailer)
		w.withTrailer = w.withTrailer[:0]
	}
	if err != nil {
		w.fail(err)
	}
	if trailer {
		w.finishTrailerOp()
	}
}

// finishTrailerOp finishes the READ whose trailer has just been written
// (or will never be: the connection failed).
func (w *replyWriter) finishTrailerOp() {
	if o := w.trailerOp; o != nil {
		w.trailerOp = nil
		w.c.finish(o)
	}
}

// writev2 writes a and b, either of which may be empty, with one writev.
func (w *replyWriter) writev2(a, b []byte) {
	iov := append(w.iov2[:0], a, b)
	w.writev(iov)
	clear(iov)
}

// writeCoalesced copies small replies into one buffer before writing, so
// that a TLS connection sends one record for many replies instead of one
// per header. Large payloads are written as they are.
func (w *replyWriter) writeCoalesced(iov [][]byte) error {
	const limit = 256 << 10
	b := w.scratch[:0]
	for _, v := range iov {
		if len(b)+len(v) > limit && len(b) > 0 {
			if _, err := w.c.rwc.Write(b); err != nil {
				return err
			}
			b = b[:0]
		}
		if len(v) >= limit {
			// In pieces, each under a fresh stall deadline: one Write of
			// a large payload would be one deadline for all of it.
			for ; len(v) > 0; v = v[min(len(v), limit):] {
				w.rearmStallDeadline()
				if _, err := w.c.rwc.Write(v[:min(len(v), limit)]); err != nil {
					return err
				}
			}
			continue
		}
		b = append(b, v...)
	}
	w.scratch = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := w.c.rwc.Write(b)
	return err
}

// fail marks the connection dead after a socket write error: the reader is
// woken by closing the socket, and later replies are dropped.
func (w *replyWriter) fail(err error) {
	w.failed.Store(true)
	switch {
	case w.c.closed.Load():
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.c.log.Warn("client read no reply for the idle timeout; closing", "timeout", w.c.srv.IdleTimeout)
	default:
		w.c.log.Debug("reply write failed", "err", err)
	}
	w.c.closeNow()
}

// streamRead sends a READ larger than one buffer chunk by chunk. The first
// chunk is read before anything goes out, so an early failure still gets a
// proper error reply. Under structured replies each chunk is its own
// OFFSET_DATA chunk and a later failure gets an ERROR_OFFSET chunk. A DF
// read, which must not be fragmented, is one chunk: a later failure pads
// it and is reported after it (see endData). Under simple replies a
// failure after the header cannot be reported (proto.md "Simple reply
// message": the server "MUST initiate a hard disconnect"), so the
// connection is closed.
func (w *replyWriter) streamRead(o *op) {
	c := w.c
	off, n := int64(o.req.Offset), int(o.req.Length)
	chunk := o.buf
	if chunk == nil { // the budget was exhausted
		chunk = c.spare(&c.writerSpare)
	}
	first := chunk[:min(len(chunk), n)]
	if !o.firstRead { // the budget was full: nothing was read yet
		if err := readFull(c.exp.Backend, first, off); err != nil {
			o.stream = false
			o.fail(err)
			o.encode(c.structured)
			w.send1(o)
			return
		}
	}
	if c.structured && o.req.Flags&protocol.CmdFlagDF == 0 {
		w.streamChunks(o, chunk, first)
		return
	}
	w.writev2(o.hdr[:o.hdrLen], first)
	done := len(first)
	if !w.failed.Load() && done < n {
		if sent, ok, err := w.sendfileRange(c.exp.Backend, off+int64(done), int64(n-done)); ok {
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

// endData ends a READ reply whose data went out after its header, once
// done bytes of it are out, or the data failed there with err.
//
// Under structured replies the data chunk was not marked final (see
// op.encode): on success a NONE chunk ends the reply; on failure the
// rest of the chunk is padded with zeros and an ERROR_OFFSET chunk ends
// it, and the connection carries on (proto.md "NBD_CMD_READ": the server
// "MUST still complete the transmission of any current chunk"). Under
// simple replies a failure can only end in a hard disconnect.
func (w *replyWriter) endData(o *op, done int64, err error) {
	c := w.c
	off, n := int64(o.req.Offset), int64(o.req.Length)
	if done >= n {
		err = nil // all the data went out: an error after it changes nothing
	}
	switch {
	case w.failed.Load():
	case err == nil:
		if c.structured {
			protocol.ChunkHeader{Flags: protocol.ReplyFlagDone, Type: protocol.ReplyTypeNone, Cookie: o.req.Cookie}.Put(w.trailer[:])
			w.trailerDue = true // sent with whatever is written next
		}
	case errors.Is(err, os.ErrDeadlineExceeded): // sendfile met the stall deadline
		w.fail(err)
	case c.structured:
		w.pad(n - done)
		w.sendErrorOffset(o, off+done, err)
	default:
		streamAborts.Add(1)
		w.fail(fmt.Errorf("%v failed after its reply header was sent: %w", protocol.CmdRead, err))
		c.requestFailed(o.req, Errno(err), fmt.Errorf("at offset %d, after the reply header was sent (a simple reply cannot carry the error: disconnecting): %w", off+done, err))
	}
}

// sendErrorOffset ends o's structured READ reply with an ERROR_OFFSET
// chunk saying the data failed at offset at (proto.md
// "NBD_REPLY_TYPE_ERROR_OFFSET"); the connection carries on.
func (w *replyWriter) sendErrorOffset(o *op, at int64, err error) {
	w.c.requestFailed(o.req, replyErrno(o.req, Errno(err)), fmt.Errorf("at offset %d, after part of the data was sent: %w", at, err))
	msg := protocol.AppendErrorChunk(nil, replyErrno(o.req, Errno(err)), clientMessage(err), true, uint64(at))
	protocol.ChunkHeader{Flags: protocol.ReplyFlagDone, Type: protocol.ReplyTypeErrorOffset, Cookie: o.req.Cookie,
		Length: uint32(len(msg))}.Put(w.chunkHdr[:])
	w.writev2(w.chunkHdr[:protocol.ChunkHeaderSize], msg)
}

// zeros pads a data chunk that failed part way (endData).
var zeros [64 << 10]byte

// pad writes n zero bytes.
func (w *replyWriter) pad(n int64) {
	for n > 0 && !w.failed.Load() {
		part := zeros[:min(n, int64(len(zeros)))]
		w.writev2(part, nil)
		n -= int64(len(part))
	}
}

// flushTrailer sends a reply's final NONE chunk if nothing written since
// has carried it (see endData and writev).
func (w *replyWriter) flushTrailer() {
	if w.trailerDue {
		w.writev(nil)
	}
}

// send1 writes one op's reply without finishing it.
func (w *replyWriter) send1(o *op) {
	w.writev2(o.hdr[:o.hdrLen], o.extra)
}

// streamChunks sends a structured READ as one OFFSET_DATA chunk per
// buffer, each read before it is sent. A failure after the first chunk is
// reported in an ERROR_OFFSET chunk that ends the reply, and the
// connection carries on (proto.md "Structured reply chunk message").
func (w *replyWriter) streamChunks(o *op, chunk, data []byte) {
	c := w.c
	off, n := int64(o.req.Offset), int64(o.req.Length)
	h := &w.chunkHdr
	for done := int64(0); ; {
		last := done+int64(len(data)) == n
		flags := protocol.ReplyFlag(0)
		if last {
			flags = protocol.ReplyFlagDone
		}
		protocol.ChunkHeader{Flags: flags, Type: protocol.ReplyTypeOffsetData, Cookie: o.req.Cookie,
			Length: uint32(protocol.OffsetDataHeaderSize + len(data))}.Put(h[:])
		putUint64(h[protocol.ChunkHeaderSize:], uint64(off+done))
		w.writev2(h[:], data)
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
