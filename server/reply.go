package server

import (
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// The reply writer: who writes on the socket, and when. Requests finish
// in any order; their replies go out through one replyWriter per
// connection, by these rules:
//
//  1. One goroutine at a time owns the socket for writing: the one that
//     set busy (under mu). Everything below "owned by whoever holds busy"
//     in replyWriter is touched by it alone.
//  2. Three kinds of goroutine take it: the reader, to send the replies
//     of a burst it ran itself (direct: one writev that never waits); a
//     request's own goroutine, to send its reply (sendOwn: it may wait);
//     the writer goroutine (loop), for whatever is queued while nobody
//     else holds it.
//  3. The owner sends, in order, the carry (what the socket did not take
//     of a direct write), then the queue, and lets go only once both are
//     empty, under mu; so a reply queued while the socket was taken is
//     never stranded.
//  4. The reader never waits for the socket: what a direct write leaves
//     becomes the carry, which the writer goroutine sends; the replies of
//     the burst it did not reach are queued ahead of the rest.
//  5. A reply whose data follows its header only as it is read or sent
//     (a streamed or sendfile READ: replytail.go) needs an owner that may
//     wait. A streamed one is never sent directly. A sendfile one is
//     started directly as far as the socket takes it without waiting
//     (directFile), and the carry holds the rest of its range, which the
//     owner sends and ends as it would have sent the whole.
//  6. Replies that are ready together share one writev (writeBatch).
//  7. Every reply handed over is finished exactly once, after its last
//     byte is written or once the connection has failed, by the owner
//     (finishSent): after each reply that sent alone, and at the end of
//     each batch.
type replyWriter struct {
	c    *conn
	wake chan struct{} // capacity 1: "the queue is not empty"
	quit chan struct{}
	done chan struct{}

	mu    sync.Mutex
	queue []*op // guarded by mu
	busy  bool  // guarded by mu: some goroutine owns the socket

	// Owned by whoever holds busy.
	spare    []*op
	sent     []*op // replies written whole, to finish (finishSent)
	iov      [][]byte
	scratch  []byte // coalesces replies over TLS, which has no writev
	carry    [][]byte
	carryOps []*op // direct replies the socket took only part of; sent first
	// carryFile is the sendfile READ a direct write left part way, sent
	// after the carry from carryDone bytes into its data.
	carryFile *op
	carryDone int64
	files     *fileSender          // sendfile(2) on a plain socket, else nil
	iov2      [2][]byte            // scratch of writev2
	chunkHdr  [maxReplyHeader]byte // a streamed READ's chunk header
	out       *vecIO               // writev on a plain socket, else nil
	armed     bool                 // a stall deadline is set (armStallDeadline)
	// trailer is the NONE chunk that ends a READ whose data chunk went
	// out unfinished (endData); trailerDue until it is sent, with the
	// next writev. withTrailer is that writev's scratch.
	trailer     [maxReplyHeader]byte
	trailerLen  int
	trailerDue  bool
	trailerOp   *op // the READ the trailer ends: finished once it is sent
	withTrailer [][]byte
	failed      atomic.Bool
}

func newReplyWriter(c *conn) *replyWriter {
	return &replyWriter{c: c, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// enqueueAll hands the replies of ops, which the reader ran, to the
// writer. It never blocks: when the socket is free it sends them at once
// without waiting (direct), and otherwise queues them for the owner.
func (w *replyWriter) enqueueAll(ops []*op) {
	w.mu.Lock()
	if w.out != nil && !w.busy && len(w.queue) == 0 && !w.carrying() && allDirect(ops) {
		w.busy = true
		w.mu.Unlock()
		w.direct(ops)
		return
	}
	w.queue = append(w.queue, ops...)
	busy := w.busy
	w.mu.Unlock()
	if !busy { // a busy owner sends the queue before letting go
		w.kick()
	}
}

// sendOwn sends o's reply from the calling goroutine, which may block: a
// request's own goroutine, never the reader. When nobody owns the socket,
// the caller takes it: it writes o's reply, waiting for the socket as
// needed, then whatever was queued meanwhile, without the hand-off to the
// writer goroutine whose wake-up costs a context switch (it made file
// READs cost twice go-nbd's CPU). Otherwise o is queued for the owner.
func (w *replyWriter) sendOwn(o *op) {
	w.mu.Lock()
	if w.busy || len(w.queue) > 0 || w.carrying() {
		w.queue = append(w.queue, o)
		busy := w.busy
		w.mu.Unlock()
		if !busy {
			w.kick()
		}
		return
	}
	w.busy = true
	w.mu.Unlock()
	one := [1]*op{o}
	w.writeBatch(one[:])
	w.finishSent()
	w.drainOwned()
}

func (w *replyWriter) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// stop ends the writer goroutine once every op has been finished.
func (w *replyWriter) stop() {
	close(w.quit)
	<-w.done
}

// loop is the writer goroutine.
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

// drain takes the socket if nobody owns it and there is something to send.
func (w *replyWriter) drain() {
	w.mu.Lock()
	if w.busy || (len(w.queue) == 0 && !w.carrying()) {
		w.mu.Unlock()
		return
	}
	w.busy = true
	w.mu.Unlock()
	w.drainOwned()
}

// drainOwned sends the carry and the queue until both are empty, then
// lets go of the socket (rule 3). The caller holds busy.
func (w *replyWriter) drainOwned() {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 && !w.carrying() {
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
		w.finishSent()
	}
}

// finishSent finishes the replies written whole since the last call
// (rule 7).
func (w *replyWriter) finishSent() {
	if len(w.sent) == 0 {
		return
	}
	answered := !w.failed.Load()
	now := requestClock()
	for _, o := range w.sent {
		if answered {
			w.c.counts.answered(o.req.Type, o.start, now)
		}
		w.c.finish(o)
	}
	clear(w.sent)
	w.sent = w.sent[:0]
}

// writeBatch sends the replies of batch in order, sharing writevs. A
// reply that sends alone (replytail.go) needs the socket to itself, so
// what precedes it is sent first.
func (w *replyWriter) writeBatch(batch []*op) {
	start := 0
	for i, o := range batch {
		if !o.sendsAlone() {
			continue
		}
		w.send(batch[start:i])
		w.sendTail(o)
		// Its slot and bytes go back now, not after the rest of the
		// batch: the reader may be waiting for them.
		w.finishSent()
		start = i + 1
	}
	w.send(batch[start:])
	w.flushTrailer()
}

// send writes the replies of ops with one writev.
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
	w.sent = append(w.sent, ops...)
}

// direct sends the replies of ops from the reader without waiting. When
// the socket takes all of them, which is the usual case for replies that
// fit in the socket buffer, they leave without a goroutine hand-off (the
// cost that dominates small requests): the replies between two sendfile
// READs share one writev with the header of the second and the trailer
// of the first; each sendfile READ's data follows its header with
// sendfile(2). Otherwise the rest becomes the carry, for the writer
// goroutine (rule 4). The caller holds busy; direct lets go of it.
func (w *replyWriter) direct(ops []*op) {
	for len(ops) > 0 {
		i := slices.IndexFunc(ops, (*op).sendsAlone)
		if i < 0 {
			w.directReplies(ops, nil)
			ops = nil
			break
		}
		file := ops[i]
		whole := w.directReplies(ops[:i], file) && w.directFile(file)
		ops = ops[i+1:]
		if !whole {
			break
		}
	}
	if w.trailerDue && !w.carrying() {
		w.directReplies(nil, nil)
	}
	w.finishSent()
	w.mu.Lock()
	if len(ops) > 0 { // the carry goes first (rule 3), then these
		w.queue = slices.Insert(w.queue, 0, ops...)
	}
	w.busy = false
	pending := len(w.queue) > 0 || w.carrying()
	w.mu.Unlock()
	if pending {
		w.kick()
	}
}

// directReplies writes, with one writev that does not wait, the trailer
// due from the last sendfile READ, the replies of ops, and the header of
// file, a sendfile READ, if not nil. It reports whether the socket took
// all of it; otherwise what is left is the carry, and file's data with
// it.
func (w *replyWriter) directReplies(ops []*op, file *op) bool {
	iov := w.iov[:0]
	trailerOp := w.trailerOp
	if w.trailerDue {
		iov = append(iov, w.trailer[:w.trailerLen])
		w.trailerDue, w.trailerOp = false, nil
	}
	for _, o := range ops {
		iov = appendReply(iov, o)
	}
	if file != nil {
		iov = append(iov, file.hdr[:file.hdrLen])
	}
	n, err := w.tryWritev(iov)
	if err != nil {
		w.fail(err)
		n = iovLen(iov) // nothing more will be sent: finish them all
	}
	left := n
	if trailerOp != nil {
		w.account(trailerOp, w.trailerLen, &left)
	}
	for _, o := range ops {
		w.account(o, replyLen(o), &left)
	}
	if file != nil && left < file.hdrLen {
		w.carryFile, w.carryDone = file, 0
	}
	if w.carrying() {
		w.carry = appendRest(w.carry[:0], iov, n)
	}
	clear(iov)
	w.iov = iov[:0]
	return !w.carrying()
}

// account places o, whose reply took the next l bytes of a direct write
// of which left were not yet accounted for: among the replies sent if
// the socket took all of them, else among the carry's. Once one is
// carried, left is -1, so every reply after it is carried too.
func (w *replyWriter) account(o *op, l int, left *int) {
	if *left >= l {
		*left -= l
		w.sent = append(w.sent, o)
		return
	}
	*left = -1
	w.carryOps = append(w.carryOps, o)
}

// directFile sends the data of o, a sendfile READ whose header is out,
// from the reader with sendfile(2) calls that do not wait. When the
// socket takes all of it, o ends as sendTail ends it, its trailer due
// with the next write; otherwise the rest of its range is the carry
// (rule 5), and directFile reports false. A sendfile that fails is left
// to the owner too, which meets the failure again and ends the reply as
// replytail.go does. The range is in the page cache (the planner checked,
// sendsFile), so the call waits on no device, unless the pages of a file
// on a disk were evicted since: then the reader waits for them, as a
// pread of the same data would.
func (w *replyWriter) directFile(o *op) bool {
	if w.failed.Load() {
		w.sent = append(w.sent, o)
		return true
	}
	n := int64(o.req.Length)
	if sent, _ := w.files.send(w.c.exp.file.File(), int64(o.req.Offset), n, false); sent < n {
		w.carryFile, w.carryDone = o, sent
		return false
	}
	w.endData(o, n, nil)
	w.ended(o)
	return true
}

// carrying reports whether a direct write left a carry (rule 4). The
// owner asks it, or anyone under mu while nobody owns the socket.
func (w *replyWriter) carrying() bool { return len(w.carryOps) > 0 || w.carryFile != nil }

// directMax is the largest READ reply sent directly. Up to it a reply
// usually fits in the socket's send buffer (DefaultUnixSendBuffer on a
// unix socket), so a client with one request in flight gets it without
// the wake-up of the writer goroutine, a futex and a context switch per
// request; what the socket does not take goes to the writer as the
// carry, as for any direct write. docs/performance.md has the
// measurements (serial and default-parallelism reads against 64 KiB).
const directMax = 1 << 20

// allDirect reports whether every reply of ops may be sent directly:
// none larger than directMax, and none streamed (rule 5).
func allDirect(ops []*op) bool {
	for _, o := range ops {
		if o.req.Type == protocol.CmdRead && o.err == nil && (o.req.Length > directMax || o.plan.data == PathReadStreamed) {
			return false
		}
	}
	return true
}

// tryWritev writes as much of iov as the socket takes now, without
// waiting for it to drain.
func (w *replyWriter) tryWritev(iov [][]byte) (int, error) {
	if w.failed.Load() {
		return 0, errFailed
	}
	return w.out.try(iov)
}

// sendCarry sends the rest of what a direct write left, before anything
// else: the rest of its replies, then the rest of a sendfile READ's
// data, which it ends as sendTail would.
func (w *replyWriter) sendCarry() {
	if len(w.carry) > 0 {
		w.writev(w.carry)
		clear(w.carry)
		w.carry = w.carry[:0]
	}
	w.sent = append(w.sent, w.carryOps...)
	clear(w.carryOps)
	w.carryOps = w.carryOps[:0]
	if o := w.carryFile; o != nil {
		w.carryFile = nil
		w.sendFileData(o, w.carryDone)
		w.ended(o)
	}
}

// writev writes all of iov, waiting for the socket as needed, after the
// trailer of the last streamed READ if it is due. A plain socket gets raw
// writev(2) calls, which allocate nothing; TLS gets coalesced records;
// anything else (net.Pipe) a Write per slice. Empty slices are never
// written: net.Pipe and TLS would send an empty write (see
// conn.optReplyData).
func (w *replyWriter) writev(iov [][]byte) {
	if w.failed.Load() {
		w.trailerDue = false
		w.trailerSent()
		return
	}
	if w.trailerDue {
		w.trailerDue = false
		iov = append(append(w.withTrailer[:0], w.trailer[:w.trailerLen]), iov...)
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
		w.trailerSent()
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

// errFailed is returned for writes after the connection failed.
var errFailed = errors.New("connection already failed")

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

// replyLen is the length of o's reply on the wire, trailer aside.
func replyLen(o *op) int {
	if len(o.iov) > 0 {
		return iovLen(o.iov)
	}
	n := o.hdrLen + len(o.extra) + len(o.data) + iovLen(o.views)
	if o.sendsAlone() {
		n += int(o.req.Length)
	}
	return n
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
