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
// takes: it moves on each time the reader gets more (vecIO.onBlock and
// pipeIn.onBlock when the socket runs dry, and after every payloadStep
// read through the read buffer).

// payloadStep is how much of a payload is read through the read buffer
// between two moves of the deadline.
const payloadStep = 64 << 10

// armPayloadDeadline starts the idle clock for the payload about to be
// read, when Server.IdleTimeout is set; disarmPayloadDeadline stops it.
func (c *conn) armPayloadDeadline() {
	if c.srv.IdleTimeout <= 0 || c.nc == nil {
		return
	}
	c.payloadArmed = true
	c.rearmPayloadDeadline()
}

// rearmPayloadDeadline moves an armed payload deadline to IdleTimeout
// from now: the client has just sent more.
func (c *conn) rearmPayloadDeadline() {
	if c.payloadArmed {
		c.nc.SetReadDeadline(time.Now().Add(c.srv.IdleTimeout))
	}
}

func (c *conn) disarmPayloadDeadline() {
	if c.payloadArmed {
		c.nc.SetReadDeadline(time.Time{})
		c.payloadArmed = false
	}
}

// readPayload fills buf from the read buffer, moving the deadline on
// every payloadStep bytes.
func (c *conn) readPayload(buf []byte) error {
	if !c.payloadArmed {
		_, err := io.ReadFull(c.br, buf)
		return err
	}
	for len(buf) > 0 {
		n := min(len(buf), payloadStep)
		if _, err := io.ReadFull(c.br, buf[:n]); err != nil {
			return err
		}
		buf = buf[n:]
		c.rearmPayloadDeadline()
	}
	return nil
}

// discardPayload reads and drops n payload bytes, as readPayload reads.
func (c *conn) discardPayload(n int) error {
	for n > 0 {
		k := n
		if c.payloadArmed {
			k = min(n, payloadStep)
		}
		if _, err := c.br.Discard(k); err != nil {
			return err
		}
		n -= k
		c.rearmPayloadDeadline()
	}
	return nil
}
