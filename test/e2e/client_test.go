package e2e

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
)

// rawClient is nbdd's own NBD client (internal/nbdclient), for the
// requests real clients refuse to send: unknown commands, bad magic,
// oversized payloads. It negotiates fixed newstyle with NO_ZEROES and
// NBD_OPT_GO, and no structured replies, so every reply is simple.
type rawClient struct {
	conn  net.Conn
	nbd   *nbdclient.Conn
	size  uint64
	flags protocol.TransmissionFlag
}

// dialRaw connects to nbdd's unix socket sock and opens export name.
func dialRaw(t *testing.T, sock, name string) *rawClient {
	t.Helper()
	c, err := openRaw(sock, name)
	if err != nil {
		t.Fatalf("raw client: %v", err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// openRaw is dialRaw returning its error, for callers that expect failure.
func openRaw(sock, name string) (*rawClient, error) {
	nbd, nc, exp, err := nbdclient.Dial("unix", sock, name, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &rawClient{conn: nc, nbd: nbd, size: exp.Size, flags: exp.Flags}, nil
}

// openRawOn opens export name on the connection nc, which it closes if
// that fails.
func openRawOn(nc net.Conn, name string) (*rawClient, error) {
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	nbd := nbdclient.New(nc)
	exp, err := nbd.Open(name)
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return &rawClient{conn: nc, nbd: nbd, size: exp.Size, flags: exp.Flags}, nil
}

// send writes one request header and its payload.
func (c *rawClient) send(r protocol.Request, payload []byte) error {
	return c.nbd.Send(r, payload)
}

// reply reads one simple reply, with the data of a successful READ.
func (c *rawClient) reply() (protocol.SimpleReply, []byte, error) {
	r, err := c.nbd.ReadReply()
	return protocol.SimpleReply{Error: r.Errno, Cookie: r.Cookie}, r.Data, err
}

// do sends one request and waits for its reply, which must carry the same
// cookie; for a successful READ it returns the data.
func (c *rawClient) do(r protocol.Request, payload []byte) (protocol.Errno, []byte, error) {
	rep, err := c.nbd.Do(r, payload)
	return rep.Errno, rep.Data, err
}

// mustDo is do that fails the test on a transport error.
func (c *rawClient) mustDo(t *testing.T, r protocol.Request, payload []byte) (protocol.Errno, []byte) {
	t.Helper()
	errno, data, err := c.do(r, payload)
	if err != nil {
		t.Fatalf("%v cookie %d offset %d length %d: %v", r.Type, r.Cookie, r.Offset, r.Length, err)
	}
	return errno, data
}

// expectClosed fails the test unless the server closes the connection
// (EOF or reset) within a few seconds, without sending a reply.
func (c *rawClient) expectClosed(t *testing.T, what string) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [protocol.SimpleReplySize]byte
	n, err := io.ReadFull(c.nbd.Reader(), b[:])
	var ne net.Error
	switch {
	case err == nil:
		r, _ := protocol.DecodeSimpleReply(&b)
		t.Errorf("after %s: server replied %+v; want the connection closed", what, r)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("after %s: connection still open after 5s; want it closed", what)
	case n > 0:
		t.Errorf("after %s: %d stray bytes %x, then %v; want the connection closed", what, n, b[:n], err)
	}
}
