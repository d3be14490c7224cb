package server

import (
	"context"
	"crypto/tls"
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

// Defaults for the zero values of Server's fields.
const (
	DefaultQueueDepth       = 64
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultBudget           = 256 << 20
	// DefaultMaxInflightBytes bounds the payload bytes in flight on one
	// connection; the kernel client keeps at most 128 requests of 128 KiB
	// (its default max_sectors_kb) in flight, 16 MiB, so this leaves room
	// for larger requests without letting one connection take the whole
	// budget.
	DefaultMaxInflightBytes = 64 << 20
	// DefaultUnixSendBuffer is the send buffer asked for on unix-socket
	// connections when Server.SendBuffer is zero. The kernel's default
	// (net.core.wmem_default, 208 KiB) is smaller than one 256 KiB READ
	// reply of nbdcopy or qemu-img, so each such reply stalled the writer
	// halfway until the client had read the first part; with 1 MiB
	// (2 MiB of accounting, as the kernel doubles it) nbdcopy reads a
	// memory export about 15% faster (docs/performance.md).
	DefaultUnixSendBuffer = 1 << 20
	// DefaultMaxBackendCalls is the server-wide bound on backend calls
	// running on goroutines of their own when Server.MaxBackendCalls is
	// zero: a few disks' worth of queue depth, far below the runtime's
	// 10,000-thread limit.
	DefaultMaxBackendCalls = 256
)

// TLSMode says whether clients may or must negotiate TLS
// (proto.md "TLS support").
type TLSMode int

// TLS modes.
const (
	// TLSOff does not offer NBD_OPT_STARTTLS.
	TLSOff TLSMode = iota
	// TLSOn offers STARTTLS but serves plaintext clients too, except for
	// exports marked TLSOnly (SELECTIVETLS).
	TLSOn
	// TLSRequire refuses every option but STARTTLS and ABORT until TLS is
	// up (FORCEDTLS).
	TLSRequire
)

// A Server serves NBD exports. Its zero value works; the exported fields
// must not change once the server is serving.
type Server struct {
	// Exports are the exports clients may select by name.
	Exports []Export
	// Source resolves names not found in Exports (for example a directory
	// of images). Nil means Exports only.
	Source ExportSource
	// DefaultExport is the name the empty export name selects. If empty and
	// exactly one export is configured, that export is the default.
	DefaultExport string

	// MaxRequestSize bounds READ and WRITE lengths; 0 means
	// protocol.DefaultMaxPayload (32 MiB). Values outside
	// [MinRequestSizeLimit, MaxRequestSizeLimit] (64 KiB, 1 GiB) are
	// taken as the nearer bound. A WRITE above it but within 32 MiB gets
	// an EINVAL reply, its payload read and dropped; only a larger one
	// ends the connection (proto.md "Size constraints").
	MaxRequestSize uint32
	// QueueDepth bounds requests in flight per connection; 0 means
	// DefaultQueueDepth.
	QueueDepth int
	// MaxInflightBytes bounds payload bytes in flight per connection; 0
	// means DefaultMaxInflightBytes.
	MaxInflightBytes int64
	// Buffers supplies payload buffers; nil means the power-of-two pool
	// under a DefaultBudget memory budget.
	Buffers bufstrategy.Factory

	// HandshakeTimeout bounds the whole handshake; 0 means
	// DefaultHandshakeTimeout, negative means none.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that sends no request for this long
	// while none is in flight, one whose client reads none of its replies
	// for this long, and one whose client sends nothing more of a WRITE's
	// payload for this long (either would otherwise hold its requests'
	// buffers for good); 0 means never (the kernel keeps idle connections
	// for months).
	IdleTimeout time.Duration
	// SendBuffer is the socket send buffer (SO_SNDBUF) asked for on each
	// connection, so that large READ replies queue whole. 0 means
	// DefaultUnixSendBuffer on unix sockets and the kernel's autotuning
	// on TCP (setting SO_SNDBUF switches TCP autotuning off, and it
	// already grows to net.ipv4.tcp_wmem's maximum); a positive value
	// applies to both; negative leaves every socket as the kernel made
	// it. The kernel caps the value at net.core.wmem_max.
	SendBuffer int

	// MaxBackendCalls bounds, server-wide, the requests whose backend
	// calls run at once on goroutines of their own (requests on backends
	// that may block, and large ones on backends that never do); the
	// others wait for a turn, parked, holding no thread. Each such call
	// may hold an OS thread while it blocks in the kernel, and the Go
	// runtime kills a program that passes 10,000 threads
	// (runtime/debug.SetMaxThreads): without a bound, 160 kernel-client
	// connections with 64 requests each on a stalled disk would. nbdkit
	// bounds the same thing with 16 threads per connection. 0 means
	// DefaultMaxBackendCalls; negative means no bound.
	MaxBackendCalls int

	// MaxConns bounds connections server-wide, MaxConnsPerHost per client
	// IP address; 0 means no limit. Unix-socket peers count only toward
	// MaxConns (see Peer).
	MaxConns, MaxConnsPerHost int

	// NoStructuredReplies refuses NBD_OPT_STRUCTURED_REPLY and
	// NBD_OPT_EXTENDED_HEADERS with NBD_REP_ERR_UNSUP, so every request
	// is compact and every reply a simple reply (proto.md
	// "Structured reply chunk message"; nbdkit's --no-sr). Structured
	// replies carry holes, block status and error messages, but a client
	// reads each READ reply in more pieces (libnbd: four receives for a
	// 4 KiB READ instead of two), which costs a client-bound workload such
	// as fio's 4 KiB random reads. False, the zero value, offers them.
	NoStructuredReplies bool

	// NoIdlePoll stops the reader from polling an empty socket for the
	// next request after a short one at queue depth 1 (idlepoll.go), so
	// that it always parks at once and the runtime wakes it when the
	// request comes. Polling doubles queue-depth-1 IOPS on a virtual
	// machine whose idle vCPUs halt, and each connection stops polling by
	// itself when its polls find nothing; but where many connections at
	// queue depth 1 keep every CPU busy, the polls find their requests
	// and cost server CPU for no more IOPS (docs/performance.md). False,
	// the zero value, polls.
	NoIdlePoll bool

	// Access limits which clients may connect, by address, and which may
	// use the exports, by client certificate; every export also has its
	// own. The zero value allows every client.
	Access Access

	// TLSConfig enables NBD_OPT_STARTTLS when TLSMode is not TLSOff.
	TLSConfig *tls.Config
	TLSMode   TLSMode

	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger

	initOnce   sync.Once
	bufs       bufstrategy.Factory
	calls      chan struct{} // a token per backend call in progress; nil: no bound
	inShutdown atomic.Bool
	nextConnID atomic.Uint64
	polling    atomic.Int32 // readers polling an empty socket (idlepoll.go)
	connCounts connCounters // accepted and refused (stats.go)

	mu        sync.Mutex
	listeners map[*net.Listener]struct{}
	conns     map[*conn]struct{}
	perHost   map[string]int // connections per client host, for MaxConnsPerHost
	nconns    int            // accepted connections, for MaxConns
	serving   sync.WaitGroup // Serve and ServeConn calls

	// ended holds the counters of ended connections, by export name
	// (Stats); guarded by mu.
	ended map[string]*exportCounters

	// Guarded by mu too: budgets of failed-request lines per export name
	// (logging.go), and the locks of static exports with SerialBackend
	// (serial.go).
	errLogs map[string]*logBudget
	serial  map[*Export]*sync.Mutex
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.bufs = s.Buffers
		if s.bufs == nil {
			budget, _ := bufstrategy.NewBudget(DefaultBudget)
			s.bufs, _ = bufstrategy.New("pool", bufstrategy.Config{MaxRequest: int(s.maxRequestSize()), Budget: budget})
		}
		switch {
		case s.MaxBackendCalls == 0:
			s.calls = make(chan struct{}, DefaultMaxBackendCalls)
		case s.MaxBackendCalls > 0:
			s.calls = make(chan struct{}, s.MaxBackendCalls)
		}
	})
}

// beginCall waits for a turn to call the backend (MaxBackendCalls).
func (s *Server) beginCall() {
	if s.calls != nil {
		s.calls <- struct{}{}
	}
}

func (s *Server) endCall() {
	if s.calls != nil {
		<-s.calls
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxRequestSize() uint32 {
	if s.MaxRequestSize != 0 {
		return min(max(s.MaxRequestSize, MinRequestSizeLimit), MaxRequestSizeLimit)
	}
	return protocol.DefaultMaxPayload
}

// MaxRequestSizeLimit caps Server.MaxRequestSize: a READ's data must fit
// in one OFFSET_DATA chunk, whose 32-bit length also counts the 8-byte
// offset (proto.md "NBD_CMD_READ"), and no sane client asks for more than
// a few MiB at once (nbdkit and qemu-nbd cap requests at 32 MiB).
const MaxRequestSizeLimit = 1 << 30

// MinRequestSizeLimit is the smallest Server.MaxRequestSize: the largest
// minimum block size the spec allows (2^16), so that the advertised
// maximum payload is never below the preferred block size, as it must
// not be (proto.md "Size constraints").
const MinRequestSizeLimit = 64 << 10

func (s *Server) queueDepth() int {
	if s.QueueDepth > 0 {
		return s.QueueDepth
	}
	return DefaultQueueDepth
}

func (s *Server) maxInflightBytes() int64 {
	if s.MaxInflightBytes > 0 {
		return max(s.MaxInflightBytes, int64(s.maxRequestSize()))
	}
	return max(DefaultMaxInflightBytes, int64(s.maxRequestSize()))
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout == 0 {
		return DefaultHandshakeTimeout
	}
	return s.HandshakeTimeout
}

// BufferStats reports the buffer strategy's counters.
func (s *Server) BufferStats() bufstrategy.Stats {
	s.init()
	return s.bufs.Stats()
}

// Serve accepts connections on l and serves each on its own goroutine. It
// returns ErrServerClosed after Shutdown, or the accept error otherwise.
// Serve closes l when it returns.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if !s.trackListener(&l, true) {
		return ErrServerClosed
	}
	defer s.trackListener(&l, false)
	defer l.Close()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.inShutdown.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		go s.serveNetConn(nc)
	}
}

func (s *Server) serveNetConn(nc net.Conn) {
	peer := peerOf(nc)
	host := peer.host()
	if !s.admit(host) {
		s.logger().Warn("connection refused: too many connections", append(peer.logAttrs(), "max_connections", s.MaxConns, "max_connections_per_host", s.MaxConnsPerHost)...)
		s.connCounts.refusedLimit.Add(1)
		nc.Close()
		return
	}
	defer s.release(host)
	_ = s.ServeConn(context.Background(), nc)
}

// ServeConn serves one connection until the client disconnects, the
// connection fails or ctx ends, and closes rwc. It returns nil after a
// clean disconnect. Any io.ReadWriteCloser works (net.Pipe, a socket
// handed over by a parent process, a fuzzer's transcript); deadlines,
// vectored writes and TLS are used when rwc is a net.Conn.
func (s *Server) ServeConn(ctx context.Context, rwc io.ReadWriteCloser) error {
	s.init()
	if nc, ok := rwc.(net.Conn); ok && len(s.Access.Addrs) > 0 {
		if err := s.admitAddr(nc, peerOf(nc)); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := newConn(s, rwc, cancel)
	if !s.trackConn(c, true) {
		rwc.Close()
		return ErrServerClosed
	}
	defer s.trackConn(c, false)
	s.connCounts.accepted.Add(1)
	stop := context.AfterFunc(ctx, func() { c.closeNow() })
	defer stop()
	return c.serve(ctx)
}

// Shutdown stops the server gracefully: it closes the listeners, answers
// new options with NBD_REP_ERR_SHUTDOWN and new requests with
// NBD_ESHUTDOWN, waits for in-flight requests to finish, flushes the
// exports and closes every connection. If ctx ends first, Shutdown closes
// the remaining connections at once and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.inShutdown.Store(true)
	began := time.Now()
	s.mu.Lock()
	for l := range s.listeners {
		(*l).Close()
	}
	s.mu.Unlock()
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for {
		if s.closeIdleConns(time.Since(began)) {
			s.serving.Wait()
			s.closeOwnBuffers()
			return s.flushExports()
		}
		select {
		case <-ctx.Done():
			// Do not wait for the connections: a request stuck in the
			// backend would keep Shutdown from returning at all.
			s.closeAllConns()
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// Close closes all listeners and connections at once, without waiting.
func (s *Server) Close() error {
	s.inShutdown.Store(true)
	s.mu.Lock()
	for l := range s.listeners {
		(*l).Close()
	}
	s.mu.Unlock()
	s.closeAllConns()
	return nil
}

// closeOwnBuffers stops the default buffer pool's reclaimer; a Buffers
// factory the caller supplied stays the caller's to close.
func (s *Server) closeOwnBuffers() {
	if s.Buffers == nil {
		s.bufs.Close()
	}
}

// closeIdleConns closes connections with nothing in flight and reports
// whether none is left.
func (s *Server) closeIdleConns(shutdownFor time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.idle(shutdownFor) {
			c.closeNow()
			delete(s.conns, c)
		}
	}
	return len(s.conns) == 0
}

func (s *Server) closeAllConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.closeNow()
	}
}

// flushExports syncs every writable static export, so that data written
// before Shutdown is durable once it returns.
func (s *Server) flushExports() error {
	var errs []error
	for i := range s.Exports {
		e := &s.Exports[i]
		if e.ReadOnly || e.Backend == nil {
			continue
		}
		if err := e.Backend.Sync(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listeners == nil {
		s.listeners = make(map[*net.Listener]struct{})
	}
	if !add {
		delete(s.listeners, l)
		return true
	}
	if s.inShutdown.Load() {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) trackConn(c *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	if !add {
		s.endStats(c)
		delete(s.conns, c)
		s.serving.Done()
		return true
	}
	if s.inShutdown.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.serving.Add(1)
	return true
}

// admit applies MaxConns and MaxConnsPerHost.
func (s *Server) admit(host string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perHost == nil {
		s.perHost = make(map[string]int)
	}
	if s.MaxConns > 0 && s.nconns >= s.MaxConns {
		return false
	}
	if host != "" && s.MaxConnsPerHost > 0 && s.perHost[host] >= s.MaxConnsPerHost {
		return false
	}
	if host != "" {
		s.perHost[host]++
	}
	s.nconns++
	return true
}

func (s *Server) release(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nconns--
	if host == "" {
		return
	}
	if s.perHost[host]--; s.perHost[host] <= 0 {
		delete(s.perHost, host)
	}
}
