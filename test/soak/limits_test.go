package soak

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
)

// limitsExportSize is the memory export of the limit tests.
const limitsExportSize = 1 << 20

// refusedWithin is how soon a refused connection must be closed.
const refusedWithin = 2 * time.Second

// newLimitsServer returns a server of one 1 MiB memory export (or b) with
// quiet logs.
func newLimitsServer(b backend.Backend) *server.Server {
	if b == nil {
		b = backend.NewMemory(limitsExportSize)
	}
	logger, _ := quietLogger()
	return &server.Server{Exports: []server.Export{{Name: "limits", Backend: b}}, Logger: logger}
}

// expectRefused dials with d and checks that the server closes the
// connection at once, without a greeting: the refusal of MaxConns and
// MaxConnsPerHost.
func expectRefused(d *net.Dialer, network, addr string) error {
	nc, err := d.Dial(network, addr)
	if err != nil {
		return nil // refused even earlier
	}
	defer nc.Close()
	start := time.Now()
	nc.SetReadDeadline(start.Add(refusedWithin))
	var greet [protocol.HandshakeSize]byte
	n, err := io.ReadFull(nc, greet[:])
	var ne net.Error
	switch {
	case err == nil:
		return fmt.Errorf("got a greeting; want the connection closed")
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("still open after %v (%d greeting bytes); want closed at once", refusedWithin, n)
	case n > 0:
		return fmt.Errorf("got %d greeting bytes before the close; want none", n)
	}
	return nil
}

// admitted polls dial until a connection is admitted and does a verified
// round trip, for at most d: a slot is released asynchronously once the
// server notices a connection has ended.
func admitted(dial func() (*client, error), off uint64, d time.Duration) (*client, error) {
	deadline := time.Now().Add(d)
	for {
		c, err := dial()
		if err == nil {
			if err = c.verifyRoundTrip(off, 4096, byte(off>>12)); err == nil {
				return c, nil
			}
			c.nc.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no connection admitted within %v: %w", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMaxConns checks Server.MaxConns: with the limit reached, further
// connections are closed at once without a greeting, while those admitted
// keep working; once one closes, a new one is admitted.
func TestMaxConns(t *testing.T) {
	const limit, extra = 3, 20
	base := goroutineBaseline()
	srv := newLimitsServer(nil)
	srv.MaxConns = limit
	r := serveUnix(t, srv)
	held := openClients(t, r.dial, limit)
	errs := parallel(extra, extra, func(int) error { return expectRefused(&net.Dialer{}, r.network, r.addr) })
	if n, first := firstErrors(errs); n > 0 {
		t.Errorf("%d of %d connections past MaxConns=%d not refused: %s", n, extra, limit, first)
	}
	checkServed(t, held, "after refusals")
	held[0].nc.Close()
	c, err := admitted(r.dial, 8192, 5*time.Second)
	if err != nil {
		t.Fatalf("after closing one of %d connections: %v", limit, err)
	}
	held[0] = c
	if err := expectRefused(&net.Dialer{}, r.network, r.addr); err != nil {
		t.Errorf("connection past MaxConns=%d after the swap: %v", limit, err)
	}
	closeClients(held)
	r.shutdown(t, 5*time.Second)
	goroutines := checkGoroutines(t, base, 5*time.Second)
	summarize(t, "MaxConns=%d: %d connections held and served, %d extra refused (closed without a greeting), "+
		"a slot freed by a close is reused; goroutines %d after shutdown (baseline %d)",
		limit, limit, extra+1, goroutines, base)
}

// TestMaxConnsPerHost checks Server.MaxConnsPerHost over TCP: a host at its
// limit is refused while another host (127.0.0.2, which Linux routes to the
// loopback too) is still admitted, and the admitted keep working.
func TestMaxConnsPerHost(t *testing.T) {
	const limit = 2
	base := goroutineBaseline()
	srv := newLimitsServer(nil)
	srv.MaxConnsPerHost = limit
	r := serve(t, srv, "tcp", "127.0.0.1:0")
	from := func(ip string) *net.Dialer {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	}
	dialFrom := func(ip string) func() (*client, error) {
		return func() (*client, error) { return dialWith(from(ip), r.network, r.addr) }
	}
	held := openClients(t, dialFrom("127.0.0.1"), limit)
	if err := expectRefused(from("127.0.0.1"), r.network, r.addr); err != nil {
		t.Errorf("connection %d from 127.0.0.1 with MaxConnsPerHost=%d: %v", limit+1, limit, err)
	}
	other, err := dialFrom("127.0.0.2")()
	if err != nil {
		t.Fatalf("127.0.0.2 with 127.0.0.1 at its limit: got %v; want admitted", err)
	}
	held = append(held, other)
	checkServed(t, held, "with 127.0.0.1 at its limit")
	closeClients(held)
	r.shutdown(t, 5*time.Second)
	goroutines := checkGoroutines(t, base, 5*time.Second)
	summarize(t, "MaxConnsPerHost=%d over TCP: host 127.0.0.1 refused past %d, 127.0.0.2 still admitted; "+
		"goroutines %d after shutdown (baseline %d)", limit, limit, goroutines, base)
}

// TestHandshakeTimeout checks Server.HandshakeTimeout against a slowloris
// that sends a valid handshake one byte every 100 ms: it is disconnected
// once the timeout has passed, and the connection slot it held (MaxConns
// is 1) is free again for a real client.
func TestHandshakeTimeout(t *testing.T) {
	const timeout = time.Second
	base := goroutineBaseline()
	srv := newLimitsServer(nil)
	srv.HandshakeTimeout, srv.MaxConns = timeout, 1
	r := serveUnix(t, srv)

	nc, err := net.Dial(r.network, r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	start := time.Now()
	if err := readGreeting(nc); err != nil {
		t.Fatalf("slowloris not admitted: %v", err)
	}
	dripped := make(chan int, 1)
	go func() { dripped <- drip(nc, 100*time.Millisecond) }()
	if err := expectRefused(&net.Dialer{}, r.network, r.addr); err != nil {
		t.Errorf("second connection while the slowloris holds the only slot: %v", err)
	}
	_, closed := waitClosed(nc, timeout+5*time.Second)
	held := time.Since(start)
	nc.Close()
	sent := <-dripped
	switch {
	case !closed:
		t.Fatalf("slowloris still connected %v after its greeting; want closed after HandshakeTimeout %v", held, timeout)
	case held < timeout-100*time.Millisecond || held > timeout+2*time.Second:
		t.Errorf("slowloris closed after %v; want about HandshakeTimeout %v", held, timeout)
	}
	c, err := admitted(r.dial, 0, 3*time.Second)
	if err != nil {
		t.Fatalf("real client after the slowloris was cut off: %v", err)
	}
	c.disconnect()
	r.shutdown(t, 5*time.Second)
	goroutines := checkGoroutines(t, base, 5*time.Second)
	summarize(t, "HandshakeTimeout=%v: slowloris at 1 byte/100ms (%d bytes sent) disconnected after %v, its slot "+
		"(MaxConns=1) then served a real client; goroutines %d after shutdown (baseline %d)",
		timeout, sent, held.Round(time.Millisecond), goroutines, base)
}

// drip sends a valid but endless handshake one byte per interval: the
// client flags, then NBD_OPT_INFO with 4 KiB of data that never ends.
// It returns how many bytes it sent when a write fails.
func drip(nc net.Conn, interval time.Duration) int {
	msg := binary.BigEndian.AppendUint32(nil, uint32(protocol.ClientFixedNewstyle|protocol.ClientNoZeroes))
	var oh [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: protocol.OptInfo, Length: 4096}.Put(&oh)
	msg = append(msg, oh[:]...)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for sent := 0; ; sent++ {
		b := byte(0)
		if sent < len(msg) {
			b = msg[sent]
		}
		if _, err := nc.Write([]byte{b}); err != nil {
			return sent
		}
		<-tick.C
	}
}

// TestIdleTimeout checks Server.IdleTimeout: an idle connection is closed
// after it, but one whose request is still running (a READ the backend
// delays for almost 4x the timeout) is not, and after that READ's reply the
// client has the whole timeout to send its next request: one sent idle/2
// later must be served. With no IdleTimeout an idle connection stays open.
func TestIdleTimeout(t *testing.T) {
	// The delay is not a multiple of idle: the server's idle check that
	// falls due while the READ runs then comes ~150 ms after its reply, so
	// a server that counts idleness from before the reply closes the
	// connection before the follow-up request at idle/2.
	const idle, delay = 500 * time.Millisecond, 4*500*time.Millisecond - 150*time.Millisecond
	base := goroutineBaseline()
	slow := backend.NewFault(backend.NewMemory(limitsExportSize),
		backend.FaultRule{Op: backend.FaultRead, Offset: 0, Length: 4096, Delay: delay})
	srv := newLimitsServer(slow)
	srv.IdleTimeout = idle
	r := serveUnix(t, srv)

	quiet, err := r.dial()
	if err != nil {
		t.Fatal(err)
	}
	quietSince := time.Now() // its handshake is done: the server's idle clock runs
	defer quiet.nc.Close()
	busy, err := r.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer busy.nc.Close()
	idleClosed := make(chan time.Duration, 1)
	go func() {
		_, ok := waitClosed(quiet.nc, idle+5*time.Second)
		d := time.Since(quietSince) // not since this goroutine started
		if !ok {
			d = -1
		}
		idleClosed <- d
	}()
	start := time.Now()
	err = busy.verifyRoundTrip(0, 4096, 0x42)
	slowTrip := time.Since(start)
	if err != nil {
		t.Errorf("READ delayed %v with IdleTimeout %v: got %v; want it answered", delay, idle, err)
	} else if slowTrip < delay {
		t.Errorf("delayed READ answered after %v; want >= %v (is the fault rule applied?)", slowTrip, delay)
	}
	time.Sleep(idle / 2)
	followUp := busy.verifyRoundTrip(8192, 4096, 0x43)
	lastReply := time.Now()
	if followUp != nil {
		t.Errorf("request sent %v after the slow READ's reply, with IdleTimeout %v: got %v; want it served",
			idle/2, idle, followUp)
	}
	quietAfter := <-idleClosed
	if quietAfter < 0 || quietAfter < idle-100*time.Millisecond || quietAfter > idle+2*time.Second {
		t.Errorf("idle connection closed after %v (-1: not within %v); want about IdleTimeout %v",
			quietAfter, idle+5*time.Second, idle)
	}
	busyClose := "n/a (already closed)"
	if followUp == nil {
		_, ok := waitClosed(busy.nc, idle+5*time.Second)
		busyAfter := time.Since(lastReply)
		if !ok || busyAfter < idle-100*time.Millisecond || busyAfter > idle+2*time.Second {
			t.Errorf("connection idle after its last reply: closed %v after it (closed: %v); want about IdleTimeout %v",
				busyAfter, ok, idle)
		}
		busyClose = busyAfter.Round(time.Millisecond).String()
	}
	quiet.nc.Close()
	busy.nc.Close()
	r.shutdown(t, 5*time.Second)

	kept := keptIdle(t, 3*idle)
	goroutines := checkGoroutines(t, base, 5*time.Second)
	summarize(t, "IdleTimeout=%v: idle connection closed after %v; one with a READ delayed %v kept (answered after %v); "+
		"request %v after that reply: %v; then closed %v after going idle; with no IdleTimeout a connection idle %v "+
		"still served: %v; goroutines %d after shutdown (baseline %d); faults injected %d",
		idle, quietAfter.Round(time.Millisecond), delay, slowTrip.Round(time.Millisecond), idle/2, errOK(followUp),
		busyClose, 3*idle, kept, goroutines, base, slow.Total())
}

// errOK is err's text, or "ok".
func errOK(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

// keptIdle checks that with the default IdleTimeout (none) a connection
// idle for d is still served, and reports whether it was.
func keptIdle(t *testing.T, d time.Duration) bool {
	t.Helper()
	r := serveUnix(t, newLimitsServer(nil))
	c, err := r.dial()
	if err != nil {
		t.Fatal(err)
	}
	if elapsed, closed := waitClosed(c.nc, d); closed {
		t.Errorf("connection closed after %v idle with no IdleTimeout; want kept", elapsed)
		return false
	}
	if err := c.verifyRoundTrip(0, 4096, 0x17); err != nil {
		t.Errorf("round trip after %v idle with no IdleTimeout: %v", d, err)
		return false
	}
	c.disconnect()
	r.shutdown(t, 5*time.Second)
	return true
}

// openClients opens n clients with dial and fails the test if any fails.
func openClients(t *testing.T, dial func() (*client, error), n int) []*client {
	t.Helper()
	cs := make([]*client, n)
	for i := range cs {
		c, err := dial()
		if err != nil {
			closeClients(cs)
			t.Fatalf("client %d of %d: %v", i+1, n, err)
		}
		cs[i] = c
	}
	return cs
}

// checkServed does a verified round trip on each client, each in its own
// 4 KiB block.
func checkServed(t *testing.T, cs []*client, when string) {
	t.Helper()
	for i, c := range cs {
		if err := c.verifyRoundTrip(uint64(i)*4096, 4096, byte(i)); err != nil {
			t.Errorf("client %d %s: %v", i, when, err)
		}
	}
}

// closeClients disconnects every non-nil client.
func closeClients(cs []*client) {
	for _, c := range cs {
		if c != nil {
			c.disconnect()
		}
	}
}
