package server

import (
	"io"
	"time"
)

// A WRITE's payload is read under the idle timeout too: without it, a
// client that sends a WRITE header and stops part way through the payload
// would keep its connection, its buffer and its share of the budget for
// good, though it is as idle as one that sends nothing. The deadline
// bounds how long the client sends nothing, not how long the payload
// takes, nor how long the server itself takes between reads (waiting for
// a queue slot, writing a chunk to a slow disk): every read of the
// payload from the socket starts the clock afresh just before it may
// wait (payloadClock), and readv and splice start it again whenever the
// socket runs dry (vecIO.onBlock, pipeIn.onBlock).

// payloadClock gives the client IdleTimeout from now to send more of a
// payload, when Server.IdleTimeout is set. handle clears the deadline
// once the payload is read (endPayloadClock).
func (c *conn) payloadClock() {
	if c.srv.IdleTimeout <= 0 || c.nc == nil {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(c.srv.IdleTimeout))
	c.payloadArmed = true
}

// endPayloadClock clears a deadline payloadClock set.
func (c *conn) endPayloadClock() {
	if c.payloadArmed {
		c.nc.SetReadDeadline(time.Time{})
		c.payloadArmed = false
	}
}

// readPayload fills buf with payload bytes from the read buffer. Under
// the idle timeout it reads with one Read (at most one read(2)) at a time,
// starting the clock before each, so a client that keeps sending, however
// slowly, is never cut off.
func (c *conn) readPayload(buf []byte) error {
	if c.srv.IdleTimeout <= 0 {
		_, err := io.ReadFull(c.br, buf)
		return err
	}
	for len(buf) > 0 {
		c.payloadClock()
		n, err := c.br.Read(buf)
		buf = buf[n:]
		switch {
		case len(buf) == 0:
		case err == io.EOF:
			return io.ErrUnexpectedEOF
		case err != nil:
			return err
		}
	}
	return nil
}

// discardPayload reads and drops n payload bytes, as readPayload reads.
func (c *conn) discardPayload(n int) error {
	if c.srv.IdleTimeout <= 0 {
		_, err := c.br.Discard(n)
		return err
	}
	for n > 0 {
		if c.br.Buffered() == 0 {
			c.payloadClock()
			if _, err := c.br.Peek(1); err != nil { // one read(2) into the buffer
				return err
			}
		}
		k, _ := c.br.Discard(min(n, c.br.Buffered()))
		n -= k
	}
	return nil
}
