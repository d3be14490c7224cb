package soak

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
)

// client is the soak tests' NBD client: nbdd's client package
// (internal/nbdclient), which shares no code with the server, on the
// default export with simple replies. soakConn reads its replies itself
// through br, checksumming READ data as it streams in.
type client struct {
	nc     net.Conn
	nbd    *nbdclient.Conn
	br     io.Reader
	size   uint64
	flags  protocol.TransmissionFlag
	cookie uint64 // last cookie used by roundTrip
}

// dialTimeout bounds a dial and handshake, so a server that stops
// answering fails the test instead of hanging it.
const dialTimeout = 10 * time.Second

// dial connects to addr and negotiates the default export.
func dial(network, addr string) (*client, error) {
	return dialWith(&net.Dialer{}, network, addr)
}

// dialWith is dial through d, for example from a chosen local address.
func dialWith(d *net.Dialer, network, addr string) (*client, error) {
	d.Timeout = dialTimeout
	nc, err := d.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(dialTimeout))
	nbd := nbdclient.New(nc)
	exp, err := nbd.Open("")
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return &client{nc: nc, nbd: nbd, br: nbd.Reader(), size: exp.Size, flags: exp.Flags}, nil
}

// readGreeting reads and checks the server greeting. A server that refused
// the connection closes it before sending one.
func readGreeting(rw io.ReadWriter) error {
	_, err := nbdclient.Unbuffered(rw).ReadGreeting()
	return err
}

// errnoError is a reply that carried an error.
type errnoError struct {
	cmd   protocol.Cmd
	errno protocol.Errno
}

func (e *errnoError) Error() string { return fmt.Sprintf("%v: %v", e.cmd, e.errno) }

// roundTrip sends one request and waits for its reply, with no other
// request in flight. It returns the data of a READ.
func (c *client) roundTrip(cmd protocol.Cmd, off uint64, n int, payload []byte) ([]byte, error) {
	c.cookie++
	r, err := c.nbd.Do(protocol.Request{Type: cmd, Cookie: c.cookie, Offset: off, Length: uint32(n)}, payload)
	switch {
	case err != nil:
		return nil, err
	case r.Errno != protocol.EOK:
		return nil, &errnoError{cmd, r.Errno}
	}
	return r.Data, nil
}

// verifyRoundTrip writes a pattern at off, reads it back and compares: the
// proof that a connection is really being served.
func (c *client) verifyRoundTrip(off uint64, n int, seed byte) error {
	want := make([]byte, n)
	for i := range want {
		want[i] = seed + byte(i*7)
	}
	if _, err := c.roundTrip(protocol.CmdWrite, off, n, want); err != nil {
		return err
	}
	got, err := c.roundTrip(protocol.CmdRead, off, n, nil)
	if err != nil {
		return err
	}
	if i := firstDiff(got, want); i >= 0 {
		return fmt.Errorf("read back at %d: byte %d is %#x; want %#x", off, i, got[i], want[i])
	}
	return nil
}

// disconnect sends NBD_CMD_DISC and closes the socket.
func (c *client) disconnect() error {
	return errors.Join(c.nbd.Disconnect(), c.nc.Close())
}

// firstDiff returns the index of the first byte where a and b differ, or
// -1 if they are equal (and of the same length).
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// waitClosed reads from nc until the peer closes it or d passes, and
// returns how long that took; ok is false if nc was still open after d.
// Any data read is discarded.
func waitClosed(nc net.Conn, d time.Duration) (elapsed time.Duration, ok bool) {
	start := time.Now()
	nc.SetReadDeadline(start.Add(d))
	defer nc.SetReadDeadline(time.Time{})
	var buf [512]byte
	for {
		_, err := nc.Read(buf[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return time.Since(start), false
		}
		return time.Since(start), true
	}
}
