package server

// The reader holds the replies of the requests it runs itself while more
// requests are already in its read buffer, then sends them together in
// one writev when the burst ends, itself and without waiting (reply.go):
// no goroutine hand-off and one system call for the burst.
//
// The rule: the reader never waits while it holds replies. A client that
// waits for those replies before it sends more (its queue is full, or it
// has nothing more to send) would otherwise wait forever, and the reader
// with it. The rule is kept where the waiting is, not by the code that
// may wait: the reader waits in three things only, and each hands the
// held replies over first, through the hook startTransmission gives it.
//
//   - The socket: every read the reader makes goes through its
//     sockReader (conn.go), which hands them over before it reads:
//     request headers, payloads read through the read buffer or dropped,
//     payloads read with readv into the export or spliced into its file.
//   - A queue slot (slotGate) and payload bytes (byteGate), when they are
//     not free at once.
//
// The end of the reader's loop hands over what is left (readRequests).

// Limits of the replies the reader holds back: enough to share one writev
// among a burst of small requests, small enough that the first reply of a
// burst does not wait long.
const (
	maxHeld      = 64
	maxHeldBytes = 256 << 10
)

// hold keeps the reply of a request the reader ran; the burst ends when no
// whole request header is left in the read buffer, or at the limits.
func (c *conn) hold(o *op) {
	c.held = append(c.held, o)
	c.heldBytes += replyLen(o)
	if c.br.Buffered() < c.mode.RequestSize() || len(c.held) >= maxHeld || c.heldBytes >= maxHeldBytes {
		c.sendHeld()
	}
}

// sendHeld hands the held replies to the writer, which sends them at once
// if the socket is free (reply.go). It never waits.
func (c *conn) sendHeld() {
	if len(c.held) == 0 {
		return
	}
	c.w.enqueueAll(c.held)
	clear(c.held)
	c.held, c.heldBytes = c.held[:0], 0
}
