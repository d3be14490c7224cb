package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
)

// readBufferSize is the socket read buffer: large enough to hold many
// request headers, so one read(2) often brings in several requests.
const readBufferSize = 64 << 10

// conn is one client connection.
type conn struct {
	srv    *Server
	id     uint64
	rwc    io.ReadWriteCloser // replaced by the TLS conn after STARTTLS
	raw    io.Closer          // the connection as accepted; closeNow closes it
	nc     net.Conn           // rwc as a net.Conn, or nil
	br     *bufio.Reader
	src    *sockReader // br's source, and headerSource's for a header read alone
	log    *slog.Logger
	closed atomic.Bool
	cancel context.CancelFunc // ends the connection's context: budget waits give up

	// peer is the client (peer.go). started and errLog feed the log: the
	// summary line at the end (with counts) and the connection's budget
	// of failed-request lines (logging.go).
	peer    Peer
	started time.Time
	errLog  logBudget

	// Handshake state, owned by the serving goroutine; reset by STARTTLS.
	fixed bool // the client set NBD_FLAG_C_FIXED_NEWSTYLE
	tls   bool
	// mode is the form of the transmission-phase messages negotiated
	// with NBD_OPT_STRUCTURED_REPLY and NBD_OPT_EXTENDED_HEADERS.
	mode       protocol.Mode
	metaBase   bool   // base:allocation selected with NBD_OPT_SET_META_CONTEXT
	metaExport string // ... for this export
	optBuf     []byte
	replyBuf   []byte

	// Transmission state.
	exp       *openExport
	bufs      bufstrategy.Strategy
	chunk     int         // the largest buffer bufs hands out; 0: any size
	slots     *slotGate   // one token per request in flight
	lastShort bool        // the reader's last request was short (startPoll)
	poll      pollBackoff // whether the reader polls an empty socket (idlepoll.go)
	inflight  sync.WaitGroup
	nInflight atomic.Int64
	// lastActive is when the last request arrived or reply left, in Unix
	// nanoseconds; kept only when Server.IdleTimeout is set.
	lastActive atomic.Int64
	bytes      *byteGate
	w          *replyWriter
	inTrans    atomic.Bool
	// spares are the buffers requests use when the strategy has none
	// (spare.go).
	spares *spareBuffers
	// format writes the reply headers (op.go).
	format replyFormat
	// held are replies of requests the reader ran and has not yet handed
	// to the writer, so that the replies of a burst of requests go out
	// together (held.go). Owned by the reader.
	held      []*op
	heldBytes int
	// inIov is the scratch of a WRITE payload read into a backend's
	// memory (payload.go); the reader's.
	inIov [][]byte
	// pipe takes large WRITE payloads for file exports with splice
	// (splice.go); made on first use, owned by the reader. noSplice is set
	// once splicing failed on this connection.
	pipe *pipeIn
	// cacheTries paces the reader's questions to the page cache (plan.go);
	// the reader's.
	cacheTries cacheTries
	noSplice   bool
	// exactHeader asks for the next header to be read alone (see
	// headerSource). Owned by the reader.
	exactHeader bool
	// payloadArmed is set while a WRITE payload is read under the idle
	// timeout (payload.go). Owned by the reader.
	payloadArmed bool
	// kernelCopies is set on a plain socket, whose reads and writes the
	// reader and the writer make with raw calls (vecio.go): the kernel
	// copies the payloads, so backend memory lent for a READ or a WRITE
	// is never touched by Go code, and sendfile and splice can be used.
	kernelCopies bool
	// counts are the connection's counters (stats.go), set when the
	// transmission phase starts; stats publishes them to Server.Stats.
	counts *exportCounters
	stats  atomic.Pointer[exportCounters]
}

func newConn(s *Server, rwc io.ReadWriteCloser, cancel context.CancelFunc) *conn {
	c := &conn{srv: s, id: s.nextConnID.Add(1), rwc: rwc, raw: rwc, cancel: cancel, started: time.Now()}
	c.nc, _ = rwc.(net.Conn)
	c.sizeSendBuffer()
	c.src = &sockReader{conn: rwc}
	c.br = bufio.NewReaderSize(c.src, readBufferSize)
	c.bytes = newByteGate(s.maxInflightBytes())
	c.peer = peerOf(c.nc)
	c.log = s.logger().With(append([]any{"conn", c.id}, c.peer.logAttrs()...)...)
	return c
}

// sizeSendBuffer applies Server.SendBuffer to the socket. A failure
// costs only speed, so it is logged, not returned.
func (c *conn) sizeSendBuffer() {
	n := c.srv.SendBuffer
	if _, isUnix := c.nc.(*net.UnixConn); n == 0 && isUnix {
		n = DefaultUnixSendBuffer
	}
	sb, ok := c.nc.(interface{ SetWriteBuffer(int) error })
	if n <= 0 || !ok {
		return
	}
	if err := sb.SetWriteBuffer(n); err != nil {
		c.srv.logger().Debug("cannot size the socket send buffer", "conn", c.id, "err", err)
	}
}

func (c *conn) serve(ctx context.Context) error {
	defer c.rwc.Close()
	c.log.Debug("connection opened")
	err := c.handshake()
	if err == nil {
		c.log.Info("client connected", "export", c.exp.Name, "size", c.exp.size, "mode", c.mode, "tls", c.tls)
		err = c.transmit(ctx)
		c.closeExport()
	}
	return c.logEnd(err)
}

// logEnd logs the end of a connection once, at the level its cause
// deserves, with what it did (summary), and returns nil for a clean end.
func (c *conn) logEnd(err error) error {
	switch {
	case err == nil || errors.Is(err, errDisconnect):
		c.log.Info("client disconnected", c.summary()...)
		c.log.Debug("buffer stats", "buffers", c.srv.bufs.Stats())
		return nil
	case errors.Is(err, errAbort):
		c.log.Debug("handshake aborted by client")
		return nil
	case c.closed.Load() && c.srv.inShutdown.Load():
		c.log.Info("connection closed by shutdown", c.summary()...)
		return ErrServerClosed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		c.log.Info("connection closed", append(c.summary(), "err", err)...)
		return err
	default:
		c.log.Warn("connection failed", append(c.summary(), "err", err)...)
		return err
	}
}

// closeNow closes the socket, which ends any blocked read or write.
func (c *conn) closeNow() {
	if c.closed.CompareAndSwap(false, true) {
		c.cancel()
		c.bytes.close()
		c.raw.Close()
	}
}

// hangUp closes the connection at the end of an orderly disconnect,
// through the TLS session if there is one, so that it ends with
// close_notify (proto.md "NBD_CMD_DISC": the server shuts down the TLS
// session and closes the connection).
func (c *conn) hangUp() {
	if c.closed.CompareAndSwap(false, true) {
		c.cancel()
		c.bytes.close()
		c.rwc.Close()
	}
}

// handshakeGrace is how long a graceful shutdown lets a connection that is
// still negotiating read its NBD_REP_ERR_SHUTDOWN replies before closing it.
const handshakeGrace = time.Second

// idle reports whether a graceful shutdown may close the connection now:
// it is in the transmission phase with nothing in flight, or it has been
// in the handshake for handshakeGrace since the shutdown began.
func (c *conn) idle(shutdownFor time.Duration) bool {
	if !c.inTrans.Load() {
		return shutdownFor >= handshakeGrace
	}
	return c.nInflight.Load() == 0
}

func (c *conn) closeExport() {
	if c.exp == nil {
		return
	}
	if c.exp.close != nil {
		if err := c.exp.close(); err != nil {
			c.log.Warn("closing export", "export", c.exp.Name, "err", err)
		}
	}
}

func (c *conn) setDeadline(d time.Duration) {
	if c.nc == nil {
		return
	}
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	c.nc.SetDeadline(t)
}

// maxPayload is the largest READ or WRITE the selected export takes.
func (c *conn) maxPayload() uint32 {
	if c.exp != nil {
		return c.exp.maxRequest(c.srv.maxRequestSize())
	}
	return c.srv.maxRequestSize()
}

// writeAll writes b to the client in one call.
func (c *conn) writeAll(b []byte) error {
	_, err := c.rwc.Write(b)
	return err
}

// sockReader is the reader's side of the socket: every read the reader
// makes goes through it (headers and payloads through the read buffer,
// payloads read with readv into a backend's memory or spliced into its
// file), and each first runs beforeRead, which hands the replies the
// reader holds to the writer (held.go). During the transmission phase on
// a plain socket it makes raw system calls, which cost less (vecio.go).
type sockReader struct {
	conn io.Reader
	v    *vecIO // raw reads; nil until transmit sets it (and under -race)
	in   *vecIO // readv into a backend's memory; nil unless kernelCopies
	// beforeRead runs before every read; nil during the handshake.
	beforeRead func()
}

func (r *sockReader) Read(b []byte) (int, error) {
	if r.beforeRead != nil {
		r.beforeRead()
	}
	if r.v == nil {
		return r.conn.Read(b)
	}
	return r.v.readSome(b)
}

// readv reads all of iov from the socket.
func (r *sockReader) readv(iov [][]byte) error {
	r.beforeRead()
	return r.in.transfer(iov)
}

// splice moves up to want bytes from the socket into p.
func (r *sockReader) splice(p *pipeIn, want int) (int, error) {
	r.beforeRead()
	return p.fill(want)
}
