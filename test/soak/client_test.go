package soak

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// client is the soak tests' NBD client: fixed newstyle, NBD_OPT_GO on the
// default export, simple replies, written on package protocol alone (as
// bench/nbdload is) so the server is driven over a real socket by code
// that shares nothing with it.
type client struct {
	nc     net.Conn
	br     *bufio.Reader
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
	c, err := handshake(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// handshake runs the client side of the fixed newstyle negotiation on nc.
func handshake(nc net.Conn) (*client, error) {
	nc.SetDeadline(time.Now().Add(dialTimeout))
	defer nc.SetDeadline(time.Time{})
	c := &client{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	if err := readGreeting(c.br); err != nil {
		return nil, err
	}
	if _, err := nc.Write(goRequest()); err != nil {
		return nil, fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	return c, c.readGoReplies()
}

// readGreeting reads and checks the server greeting. A server that refused
// the connection closes it before sending one.
func readGreeting(r io.Reader) error {
	var greet [protocol.HandshakeSize]byte
	if _, err := io.ReadFull(r, greet[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(greet[:]); m != protocol.NBDMagic {
		return fmt.Errorf("greeting magic %#x; want %#x", m, protocol.NBDMagic)
	}
	return nil
}

// goRequest is the client flags and an NBD_OPT_GO for the default export.
func goRequest() []byte {
	msg := binary.BigEndian.AppendUint32(nil, uint32(protocol.ClientFixedNewstyle|protocol.ClientNoZeroes))
	data := protocol.AppendExportRequest(nil, protocol.ExportRequest{})
	var oh [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: protocol.OptGo, Length: uint32(len(data))}.Put(&oh)
	return append(append(msg, oh[:]...), data...)
}

// readGoReplies reads NBD_OPT_GO's replies up to the ACK, keeping the
// export size and flags from NBD_INFO_EXPORT.
func (c *client) readGoReplies() error {
	for {
		var rh [protocol.OptionReplyHeaderSize]byte
		if _, err := io.ReadFull(c.br, rh[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		h, err := protocol.DecodeOptionReplyHeader(&rh)
		if err != nil {
			return err
		}
		if h.Length > protocol.MaxOptionLen {
			return fmt.Errorf("option reply of %d bytes", h.Length)
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("read option reply data: %w", err)
		}
		switch {
		case h.Type == protocol.RepAck:
			return nil
		case h.Type.IsError():
			return fmt.Errorf("NBD_OPT_GO: %v %q", h.Type, data)
		case h.Type == protocol.RepInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == uint16(protocol.InfoExport):
			c.size = binary.BigEndian.Uint64(data[2:])
			c.flags = protocol.TransmissionFlag(binary.BigEndian.Uint16(data[10:]))
		}
	}
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
	var hdr [protocol.RequestSize]byte
	protocol.Request{Type: cmd, Cookie: c.cookie, Offset: off, Length: uint32(n)}.Put(&hdr)
	if _, err := (&net.Buffers{hdr[:], payload}).WriteTo(c.nc); err != nil {
		return nil, fmt.Errorf("send %v: %w", cmd, err)
	}
	var rh [protocol.SimpleReplySize]byte
	if _, err := io.ReadFull(c.br, rh[:]); err != nil {
		return nil, fmt.Errorf("read %v reply: %w", cmd, err)
	}
	r, err := protocol.DecodeSimpleReply(&rh)
	switch {
	case err != nil:
		return nil, err
	case r.Cookie != c.cookie:
		return nil, fmt.Errorf("%v reply cookie %d; want %d", cmd, r.Cookie, c.cookie)
	case r.Error != protocol.EOK:
		return nil, &errnoError{cmd, r.Error}
	case cmd != protocol.CmdRead:
		return nil, nil
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return nil, fmt.Errorf("read %v data: %w", cmd, err)
	}
	return data, nil
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
	var hdr [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdDisc}.Put(&hdr)
	_, err := c.nc.Write(hdr[:])
	return errors.Join(err, c.nc.Close())
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
