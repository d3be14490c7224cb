package e2e

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// rawClient is a minimal NBD client built on package protocol, for the
// requests real clients refuse to send: unknown commands, bad magic,
// oversized payloads. It negotiates fixed newstyle with NO_ZEROES and
// NBD_OPT_GO, and no structured replies, so every reply is simple.
type rawClient struct {
	conn  net.Conn
	br    *bufio.Reader
	wmu   sync.Mutex // serialises request writes
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
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &rawClient{conn: conn, br: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.handshake(name); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *rawClient) handshake(name string) error {
	var greet [protocol.HandshakeSize]byte
	if _, err := io.ReadFull(c.br, greet[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:]) != protocol.NBDMagic || binary.BigEndian.Uint64(greet[8:]) != protocol.IHaveOpt {
		return fmt.Errorf("greeting %x: bad magic", greet)
	}
	if f := protocol.HandshakeFlag(binary.BigEndian.Uint16(greet[16:])); f&protocol.FlagFixedNewstyle == 0 || f&protocol.FlagNoZeroes == 0 {
		return fmt.Errorf("handshake flags %v: want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	data := protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: name, Infos: []protocol.Info{protocol.InfoExport}})
	var hdr [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: protocol.OptGo, Length: uint32(len(data))}.Put(&hdr)
	msg := binary.BigEndian.AppendUint32(nil, uint32(protocol.ClientFixedNewstyle|protocol.ClientNoZeroes))
	msg = append(append(msg, hdr[:]...), data...)
	if _, err := c.conn.Write(msg); err != nil {
		return fmt.Errorf("write NBD_OPT_GO: %w", err)
	}
	for {
		var rh [protocol.OptionReplyHeaderSize]byte
		if _, err := io.ReadFull(c.br, rh[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		r, err := protocol.DecodeOptionReplyHeader(&rh)
		if err != nil {
			return err
		}
		payload := make([]byte, min(r.Length, 1<<16))
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return fmt.Errorf("read %v payload: %w", r.Type, err)
		}
		switch {
		case r.Type.IsError():
			return fmt.Errorf("NBD_OPT_GO %q: %v %q", name, r.Type, payload)
		case r.Type == protocol.RepAck:
			return nil
		case r.Type == protocol.RepInfo && len(payload) == 12 && protocol.Info(binary.BigEndian.Uint16(payload)) == protocol.InfoExport:
			c.size = binary.BigEndian.Uint64(payload[2:])
			c.flags = protocol.TransmissionFlag(binary.BigEndian.Uint16(payload[10:]))
		}
	}
}

// send writes one request header and its payload.
func (c *rawClient) send(r protocol.Request, payload []byte) error {
	var b [protocol.RequestSize]byte
	r.Put(&b)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := (&net.Buffers{b[:], payload}).WriteTo(c.conn)
	return err
}

// reply reads one simple reply header, then dataLen bytes of data if the
// reply is a success (a READ's data).
func (c *rawClient) reply(dataLen uint32) (protocol.SimpleReply, []byte, error) {
	var b [protocol.SimpleReplySize]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return protocol.SimpleReply{}, nil, err
	}
	r, err := protocol.DecodeSimpleReply(&b)
	if err != nil || r.Error != protocol.EOK || dataLen == 0 {
		return r, nil, err
	}
	data := make([]byte, dataLen)
	_, err = io.ReadFull(c.br, data)
	return r, data, err
}

// do sends one request and waits for its reply, which must carry the same
// cookie; for a successful READ it returns the data.
func (c *rawClient) do(r protocol.Request, payload []byte) (protocol.Errno, []byte, error) {
	if err := c.send(r, payload); err != nil {
		return 0, nil, err
	}
	var n uint32
	if r.Type == protocol.CmdRead {
		n = r.Length
	}
	rep, data, err := c.reply(n)
	if err != nil {
		return 0, nil, err
	}
	if rep.Cookie != r.Cookie {
		return 0, nil, fmt.Errorf("reply cookie %#x; want %#x", rep.Cookie, r.Cookie)
	}
	return rep.Error, data, nil
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
	n, err := io.ReadFull(c.br, b[:])
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
