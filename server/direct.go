package server

import (
	"github.com/nbdd/nbdd/protocol"
)

// direct sends the replies of ops from the calling goroutine with one
// writev that does not wait. When the socket takes all of it, which is the
// usual case for replies that fit in the socket buffer, they left without a
// goroutine hand-off (the cost that dominates small requests). Otherwise
// the rest is left to the writer goroutine, so the caller, often the
// reader, never waits on a slow client. The caller holds w.busy; direct
// releases it.
func (w *replyWriter) direct(ops []*op) {
	iov := w.iov[:0]
	for _, o := range ops {
		iov = appendReply(iov, o)
	}
	n, err := w.tryWritev(iov)
	if err != nil {
		w.fail(err)
		n = iovLen(iov) // nothing more will be sent: finish them all
	}
	sent := n
	for i, o := range ops {
		l := replyLen(o)
		if sent < l {
			w.carry = appendRest(w.carry[:0], iov, n)
			w.carryOps = append(w.carryOps[:0], ops[i:]...)
			break
		}
		sent -= l
		w.c.finish(o)
	}
	clear(iov)
	w.iov = iov[:0]
	w.mu.Lock()
	w.busy = false
	pending := len(w.queue) > 0 || len(w.carryOps) > 0
	w.mu.Unlock()
	if pending {
		w.kick()
	}
}

// replyLen is the length of o's reply on the wire.
func replyLen(o *op) int {
	if len(o.iov) > 0 {
		return iovLen(o.iov)
	}
	n := o.hdrLen + len(o.extra) + len(o.data) + iovLen(o.views)
	if o.sendfile {
		n += int(o.req.Length)
	}
	return n
}

// directMax is the largest reply sent directly. A larger one would rarely
// fit in the socket buffer at once, and a partial write followed by a
// hand-off costs more than the hand-off alone.
const directMax = 64 << 10

// small reports whether o's reply may be sent directly.
func (o *op) small() bool {
	return !o.stream && !o.sendfile && (o.req.Type != protocol.CmdRead || o.err != nil || o.req.Length <= directMax)
}

// allSmall reports whether every reply of ops may be sent directly.
func allSmall(ops []*op) bool {
	for _, o := range ops {
		if !o.small() {
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

// sendCarry finishes the direct replies the socket took only part of. It
// runs on the writer goroutine, holding w.busy, before anything else is
// sent.
func (w *replyWriter) sendCarry() {
	if len(w.carryOps) == 0 {
		return
	}
	w.writev(w.carry)
	for _, o := range w.carryOps {
		w.c.finish(o)
	}
	clear(w.carry)
	clear(w.carryOps)
	w.carry, w.carryOps = w.carry[:0], w.carryOps[:0]
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
