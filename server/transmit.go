package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
)

// transmit runs the transmission phase (proto.md "Transmission"): this
// goroutine, the reader, reads each request, validates it, plans it
// (plan.go) and starts it (run.go); the reply writer sends the answers
// (reply.go). docs/architecture.md follows a request through. It returns
// errDisconnect after NBD_CMD_DISC.
func (c *conn) transmit(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.startTransmission()
	defer c.bufs.Close()
	go c.w.loop()
	c.inTrans.Store(true)
	err := c.readRequests(ctx)
	disconnect := errors.Is(err, errDisconnect)
	if disconnect {
		c.inflight.Wait() // the requests before DISC finish and are answered
	} else {
		c.closeNow() // unblock anything waiting on the socket
	}
	cancel()
	c.inflight.Wait()
	c.w.stop()
	if c.pipe != nil {
		c.pipe.close()
	}
	if disconnect {
		c.hangUp()
		c.syncOnDisconnect()
	}
	return err
}

// startTransmission sets up what the transmission phase needs: buffers,
// slots, counters, the reply writer and, on a plain socket, the raw
// system calls that let the kernel copy payloads (vecio.go).
func (c *conn) startTransmission() {
	c.optBuf, c.replyBuf = nil, nil // up to 64 KiB each, needed no more
	c.counts = &exportCounters{name: c.exp.Name}
	c.counts.conns.Add(1)
	c.stats.Store(c.counts)
	c.bufs, c.chunk = c.srv.bufs.NewConn(), c.srv.bufs.ChunkLimit()
	c.spares = newSpareBuffers()
	c.slots = newSlotGate(c.srv.queueDepth())
	c.format = replyFormat{mode: c.mode}
	c.w = newReplyWriter(c)
	// The reader waits in these three alone; each hands over the
	// replies it holds first (held.go).
	c.src.beforeRead, c.slots.beforeWait, c.bytes.beforeWait = c.sendHeld, c.sendHeld, c.sendHeld
	if sc, ok := c.rwc.(syscall.Conn); ok && !c.tls {
		if rc, err := sc.SyscallConn(); err == nil {
			c.kernelCopies = true
			c.w.out, c.src.in = newVecIO(rc, true), newVecIO(rc, false)
			c.w.out.onBlock = c.w.rearmStallDeadline
			c.w.files = newFileSender(rc, c.exp.nonBlocking, c.w.rearmStallDeadline)
			c.src.in.onBlock = c.payloadClock
			if !raceEnabled {
				c.src.v = newVecIO(rc, false)
				c.pollHeaders(c.src.v)
			}
		}
	}
}

// readRequests is the reader loop.
func (c *conn) readRequests(ctx context.Context) error {
	var buf [protocol.ExtendedRequestSize]byte
	hdr := buf[:c.mode.RequestSize()]
	defer c.sendHeld() // the last replies held, whatever ends the loop
	for {
		req, err := c.readRequest(hdr)
		if err != nil {
			return err
		}
		if req.Type == protocol.CmdDisc {
			return errDisconnect
		}
		if err := c.handle(ctx, req); err != nil {
			return err
		}
	}
}

// readRequest reads and decodes the next request header into hdr,
// c.mode.RequestSize() bytes.
func (c *conn) readRequest(hdr []byte) (protocol.ExtendedRequest, error) {
	if err := c.readHeader(hdr); err != nil && !errors.Is(err, errHeaderMagic) {
		return protocol.ExtendedRequest{}, err
	}
	req, err := c.mode.DecodeRequest(hdr) // ErrBadMagic after errHeaderMagic
	c.lastShort = req.Length <= pollMaxLength
	return req, err
}

// readHeader reads the next request header into hdr, applying the idle
// timeout: the connection is closed when nothing has been in flight and
// no reply has gone out for IdleTimeout.
func (c *conn) readHeader(hdr []byte) error {
	src := c.headerSource()
	idle := c.srv.IdleTimeout
	if idle <= 0 || c.nc == nil || c.br.Buffered() >= len(hdr) {
		_, err := c.fillHeader(src, hdr, 0)
		return err
	}
	c.touch()
	for got := 0; ; {
		c.nc.SetReadDeadline(time.Unix(0, c.lastActive.Load()).Add(idle))
		n, err := c.fillHeader(src, hdr, got)
		got = n // a deadline may cut a header in two: keep the first part
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			c.nc.SetReadDeadline(time.Time{})
			return err
		}
		quiet := time.Since(time.Unix(0, c.lastActive.Load()))
		if c.nInflight.Load() == 0 && c.br.Buffered() == 0 && quiet >= idle {
			return fmt.Errorf("idle for %v: %w", idle, err)
		}
		if c.nInflight.Load() > 0 {
			c.touch() // a request in flight is activity
		}
	}
}

// fillHeader reads hdr[got:] from src as io.ReadFull does, and returns
// how much of hdr is filled. It stops with errHeaderMagic as soon as the
// magic is in and is not the one c.mode expects: a client that sent a
// compact header where an extended one is due, and waits for its reply,
// would otherwise wait for bytes that never come, where it gets a
// disconnect. It makes no read of its own for that.
func (c *conn) fillHeader(src io.Reader, hdr []byte, got int) (int, error) {
	for got < len(hdr) {
		n, err := src.Read(hdr[got:])
		got += n
		switch {
		case got >= 4 && got < len(hdr) && binary.BigEndian.Uint32(hdr) != c.mode.RequestMagic():
			return got, errHeaderMagic
		case got == len(hdr):
			return got, nil
		case err == io.EOF && got > 0:
			return got, io.ErrUnexpectedEOF
		case err != nil:
			return got, err
		}
	}
	return got, nil
}

// errHeaderMagic: a request header began with the wrong magic.
var errHeaderMagic = errors.New("request header with the wrong magic")

// headerSource is where the next header is read from. Usually the read
// buffer, which brings in whatever the socket holds, several requests at
// a time. Right after a payload taken from the socket by the kernel
// (readv into a backend's memory, splice into its file), the next request
// is likely another such WRITE: reading its header alone keeps its
// payload in the socket for the kernel to move, where a buffered read
// would copy up to 64 KiB of it through the read buffer first.
func (c *conn) headerSource() io.Reader {
	exact := c.exactHeader && c.br.Buffered() == 0
	c.exactHeader = false
	if exact {
		return c.src
	}
	return c.br
}

// touch records activity for the idle timeout.
func (c *conn) touch() { c.lastActive.Store(time.Now().UnixNano()) }

// handle validates, plans and starts one request. Only framing violations
// and socket errors are returned; the request was then not handed on, so
// it is finished here, the reader's one call of finish.
func (c *conn) handle(ctx context.Context, req protocol.ExtendedRequest) error {
	if c.srv.IdleTimeout > 0 && c.mode.PayloadLength(req) > 0 {
		defer c.endPayloadClock()
	}
	start := requestClock()
	o := c.newOp(req)
	o.start = start
	err := c.admit(ctx, o)
	if err != nil {
		c.finish(o)
	}
	return err
}

// admit is handle's work: validate, plan, take the request's payload
// bytes and buffer, count it and start it.
func (c *conn) admit(ctx context.Context, o *op) error {
	verr := validate(o.req, c.exp, c.maxPayload(), c.mode, c.metaBase)
	if verr == nil && c.srv.inShutdown.Load() {
		verr = reject(protocol.ESHUTDOWN, "%w", ErrShutdown)
	}
	if verr != nil {
		return c.refuse(o, verr)
	}
	in := c.planInput(o.req)
	o.plan = planRequest(&in)
	if o.req.Type == protocol.CmdRead || o.plan.data == PathWriteBuffered || o.plan.data == PathWriteStreamed {
		if err := c.reserve(ctx, o); err != nil {
			return err
		}
	}
	if err := c.takeBuffer(o, &in); err != nil {
		return err
	}
	c.counts.counted(o.req, o.plan.data, o.plan.byReader())
	return c.start(ctx, o)
}

// refuse answers a request that failed validation: a per-request error
// is replied to (a rejected WRITE's payload is read and dropped first, so
// the stream stays in step); any other error ends the connection.
func (c *conn) refuse(o *op, verr error) error {
	var re *requestError
	if !errors.As(verr, &re) {
		return verr
	}
	c.counts.counted(o.req, PathNone, true)
	if n := c.mode.PayloadLength(o.req); n > 0 {
		if err := c.discardPayload(int(n)); err != nil {
			return fmt.Errorf("skip the payload of a rejected %v: %w", o.req.Type, err)
		}
	}
	o.fail(re)
	o.encode(c.format)
	c.hold(o)
	return nil
}

// planInput is what the planner sees of o's request on this connection.
func (c *conn) planInput(req protocol.ExtendedRequest) planInput {
	return planInput{
		req: req, exp: &c.exp.caps, facts: c,
		kernelCopies: c.kernelCopies, structured: c.mode >= protocol.ModeStructured, noSplice: c.noSplice,
		buffered: c.br.Buffered(), chunk: c.chunk,
	}
}

// takeBuffer gives o the buffer its plan needs, from the strategy. When
// the strategy has no room (the budget is full) or none large enough, o
// is planned again without one: its data then streams through the
// connection's spare buffers (spare.go).
func (c *conn) takeBuffer(o *op, in *planInput) error {
	switch o.plan.data {
	case PathReadBuffered, PathReadStreamed, PathWriteBuffered, PathWriteStreamed:
	default:
		return nil
	}
	buf, err := c.bufs.TryGet(int(o.req.Length))
	switch {
	case err == nil:
		o.buf, o.bufFrom = buf, bufStrategy
	case errors.Is(err, bufstrategy.ErrBudgetExhausted), errors.Is(err, bufstrategy.ErrRequestSize):
		in.noRoom = true
		o.plan = planRequest(in)
	default:
		return fmt.Errorf("buffer for %v of %d bytes: %w", o.req.Type, o.req.Length, err)
	}
	return nil
}

// reserve takes o's payload bytes from the connection's byte gate, so the
// reader stops reading the socket while too many bytes are in flight.
func (c *conn) reserve(ctx context.Context, o *op) error {
	n := int64(o.req.Length)
	if c.chunk > 0 {
		n = min(n, int64(c.chunk))
	}
	w, err := c.bytes.take(ctx, n)
	o.weight = w
	return err
}

// newOp takes a queue slot and an op for req. Taking the slot blocks when
// the connection is full, so the reader stops reading the socket rather
// than queueing without bound.
func (c *conn) newOp(req protocol.ExtendedRequest) *op {
	c.slots.take()
	c.inflight.Add(1)
	c.nInflight.Add(1)
	o := getOp()
	o.c, o.req = c, req
	return o
}

// finish releases everything o holds once its reply is out, or will
// never be. It is called once per request: by the reader for a request
// it could not hand on (handle), or by the reply writer once the reply
// is sent (reply.go).
func (c *conn) finish(o *op) {
	if c.srv.IdleTimeout > 0 {
		c.touch() // a reply went out: the idle timeout starts again
	}
	switch o.bufFrom {
	case bufStrategy:
		c.bufs.Put(o.buf)
	case bufReadSpare:
		c.spares.putRead(o.buf)
	}
	o.releaseLoans()
	if o.weight > 0 {
		c.bytes.give(o.weight)
	}
	c.logIfFailed(o)
	putOp(o)
	c.nInflight.Add(-1)
	c.slots.give()
	c.inflight.Done()
}

// syncOnDisconnect syncs a writable export after an orderly disconnect,
// so that data the client wrote without a FLUSH is durable soon after it
// leaves. The socket is already closed: a client that waits for the
// server to hang up after NBD_CMD_DISC (libnbd does) is not kept waiting
// for a sync it never asked for (proto.md "NBD_CMD_DISC" requires only
// that outstanding requests are handled first). The connection counts as
// open until the sync ends, so Server.Shutdown and Close wait for it.
func (c *conn) syncOnDisconnect() {
	if c.exp.readOnly {
		return
	}
	if err := c.exp.Backend.Sync(); err != nil {
		c.log.Warn("flush on disconnect failed", "export", c.exp.Name, "err", err)
		return
	}
	c.log.Debug("flushed on disconnect", "export", c.exp.Name)
}
