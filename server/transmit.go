package server

import (
	"context"
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
// goroutine reads and validates requests and hands them to goroutines of
// their own; the reply writer sends the answers. It returns errDisconnect
// after NBD_CMD_DISC.
func (c *conn) transmit(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Buffers never wait for the budget: a request that finds it full
	// streams through the connection's own small buffer instead of
	// queueing behind buffers others may hold forever.
	ctx = bufstrategy.NoWait(ctx)
	c.optBuf, c.replyBuf = nil, nil // up to 64 KiB each, needed no more
	c.bufs = c.srv.bufs.NewConn()
	defer c.bufs.Close()
	c.slots = make(chan struct{}, c.srv.queueDepth())
	c.readSpare = make(chan []byte, 1)
	c.readSpare <- nil // allocated on first use
	_, sc := c.rwc.(syscall.Conn)
	c.kernelCopies = sc && !c.tls
	c.w = newReplyWriter(c)
	if c.kernelCopies {
		if rc, err := c.rwc.(syscall.Conn).SyscallConn(); err == nil {
			c.w.out, c.in = newVecIO(rc, true), newVecIO(rc, false)
			c.w.out.onBlock = c.w.rearmStallDeadline
			c.in.onBlock = c.payloadClock
			if !raceEnabled {
				c.src.v = newVecIO(rc, false)
			}
		}
	}
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

// readRequests is the reader loop.
func (c *conn) readRequests(ctx context.Context) error {
	var hdr [protocol.RequestSize]byte
	defer c.release()
	for {
		if err := c.readHeader(&hdr); err != nil {
			return err
		}
		req, err := protocol.DecodeRequest(&hdr)
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

// readHeader reads the next request header, applying the idle timeout:
// the connection is closed when nothing has been in flight and no reply
// has gone out for IdleTimeout.
func (c *conn) readHeader(hdr *[protocol.RequestSize]byte) error {
	if c.br.Buffered() < protocol.RequestSize {
		c.release() // about to wait for the client
	}
	src := c.headerSource()
	idle := c.srv.IdleTimeout
	if idle <= 0 || c.nc == nil || c.br.Buffered() >= protocol.RequestSize {
		_, err := io.ReadFull(src, hdr[:])
		return err
	}
	c.touch()
	for got := 0; ; {
		c.nc.SetReadDeadline(time.Unix(0, c.lastActive.Load()).Add(idle))
		n, err := io.ReadFull(src, hdr[got:])
		got += n // a deadline may cut a header in two: keep the first part
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

// handle validates one request and starts it. Only framing violations
// and socket errors are returned.
func (c *conn) handle(ctx context.Context, req protocol.Request) error {
	if req.Type == protocol.CmdWrite && c.srv.IdleTimeout > 0 {
		defer c.endPayloadClock()
	}
	o := c.newOp(req)
	verr := validate(req, c.exp, c.maxPayload(), c.structured, c.metaBase)
	if verr == nil && c.srv.inShutdown.Load() {
		verr = reject(protocol.ESHUTDOWN, "%w", ErrShutdown)
	}
	if verr != nil {
		var re *requestError
		if !errors.As(verr, &re) {
			c.finish(o)
			return verr
		}
		if req.Type == protocol.CmdWrite {
			c.releaseUnlessBuffered(int(req.Length))
			if err := c.discardPayload(int(req.Length)); err != nil {
				c.finish(o)
				return fmt.Errorf("skip rejected write payload: %w", err)
			}
		}
		o.fail(re)
		o.encode(c.structured)
		c.w.enqueue(o)
		return nil
	}
	if req.Type == protocol.CmdWrite {
		return c.startWrite(ctx, o)
	}
	if req.Type == protocol.CmdRead {
		if err := c.reserve(ctx, o); err != nil {
			c.finish(o)
			return err
		}
	}
	c.start(ctx, o)
	return nil
}

// newOp takes a queue slot and an op for req. Taking the slot blocks when
// the connection is full, so the reader stops reading the socket rather
// than queueing without bound.
func (c *conn) newOp(req protocol.Request) *op {
	if len(c.slots) == cap(c.slots) {
		c.release() // held replies hold slots too
	}
	c.slots <- struct{}{}
	c.inflight.Add(1)
	c.nInflight.Add(1)
	o := getOp()
	o.c, o.req = c, req
	return o
}

// inlineMax is the largest request run inline on the reader for a
// non-blocking backend. Below it, handing the request to a goroutine of its
// own costs more than the memory copy it does (see docs/performance.md).
var inlineMax uint32 = 128 << 10

// start runs o: inline when runsInline says so (a READ whose data is lent
// or sent with sendfile is not copied, so its size costs nothing),
// otherwise on its own goroutine, so a slow request never stalls the ones
// behind it. At most Server.MaxBackendCalls of those run at once.
func (c *conn) start(ctx context.Context, o *op) {
	if c.runsInline(o) {
		c.exec(ctx, o)
		c.hold(o)
		return
	}
	if c.readCachedInline(ctx, o) {
		c.hold(o)
		return
	}
	c.runOwn(ctx, o, false)
}

// runOwn runs o on a goroutine of its own, within Server.MaxBackendCalls,
// and sends its reply from there. With syncOnly, o's data is written
// already and only its FUA sync is left (syncOffReader). A flag, not a
// func: a closure would cost each request an allocation.
func (c *conn) runOwn(ctx context.Context, o *op, syncOnly bool) {
	o.ownGoroutine = true
	go func() {
		c.srv.acquireCall()
		if syncOnly {
			o.fail(c.exp.Backend.Sync())
			o.encode(c.structured)
		} else {
			c.exec(ctx, o)
		}
		c.srv.releaseCall()
		c.w.sendOwn(o)
	}()
}

// runsInline reports whether the reader runs o itself: when the backend
// never blocks and o is small (or a READ whose data is lent or sent with
// sendfile), unless o syncs a backend whose Sync may wait
// (backend.SyncWaiter).
func (c *conn) runsInline(o *op) bool {
	if !c.exp.nonBlocking || c.exp.syncWaits && syncs(o.req) {
		return false
	}
	return o.req.Length <= inlineMax || o.req.Type == protocol.CmdRead && c.lendsReads()
}

// syncs reports whether req makes the backend sync: FLUSH, or FUA.
func syncs(req protocol.Request) bool {
	return req.Type == protocol.CmdFlush || req.Flags&protocol.CmdFlagFUA != 0
}

// Limits of the replies the reader holds back: enough to share one writev
// among a burst of small requests, small enough that the first reply of a
// burst does not wait long.
const (
	maxHeld      = 64
	maxHeldBytes = 256 << 10
)

// hold keeps the reply of a request the reader ran inline, so that the
// replies of the requests already in the read buffer go out together in
// one writev, sent by the reader itself when the socket is free: no
// goroutine hand-off and one system call for the burst. The reader
// releases them before anything that may wait (see release), so no reply
// is held while the reader blocks.
func (c *conn) hold(o *op) {
	c.held = append(c.held, o)
	c.heldBytes += replyLen(o)
	if c.br.Buffered() < protocol.RequestSize || len(c.held) >= maxHeld || c.heldBytes >= maxHeldBytes {
		c.release()
	}
}

// release hands the held replies to the writer. The reader calls it before
// every step that may wait: reading the socket beyond what is buffered,
// taking a queue slot or payload bytes, and leaving the loop.
func (c *conn) release() {
	if len(c.held) == 0 {
		return
	}
	c.w.enqueueAll(c.held)
	clear(c.held)
	c.held, c.heldBytes = c.held[:0], 0
}

// releaseUnlessBuffered releases the held replies unless the next n bytes
// are already in the read buffer.
func (c *conn) releaseUnlessBuffered(n int) {
	if c.br.Buffered() < n {
		c.release()
	}
}

// finish releases everything o holds once its reply is out (or the
// connection is gone).
func (c *conn) finish(o *op) {
	if c.srv.IdleTimeout > 0 {
		c.touch() // a reply went out: the idle timeout starts again
	}
	switch {
	case o.spare:
		c.readSpare <- o.buf[:cap(o.buf)] // a short READ cut it down
	case o.buf != nil:
		c.bufs.Put(o.buf)
	}
	if o.weight > 0 {
		c.bytes.release(o.weight)
	}
	c.count(o)
	putOp(o)
	c.nInflight.Add(-1)
	<-c.slots
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
