// Package nbdclient is nbdd's one NBD client, built on package protocol
// alone so that it shares no code with the server it drives: the server's
// unit tests, the end-to-end and soak tests, the load generator
// (bench/nbdload) and the kernel attach's handshake (kernel/nbdkernel) use
// it. It speaks fixed newstyle negotiation (proto.md "Fixed newstyle
// negotiation") and the transmission phase with simple and structured
// replies or extended headers, many requests in flight.
//
// A Conn reads its connection through a buffer, or, made with Unbuffered,
// reads exactly what the protocol asks for and nothing past it, so that
// the socket can be handed to the kernel after the handshake. Writes are
// safe from several goroutines (pipelining senders); reads are one
// goroutine's at a time.
package nbdclient

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// Conn is the client side of one NBD connection.
type Conn struct {
	rw io.ReadWriter
	r  io.Reader // rw, or a bufio.Reader over it
	br *bufio.Reader

	wmu sync.Mutex // serialises writes

	// Structured is set once NBD_OPT_STRUCTURED_REPLY or
	// NBD_OPT_EXTENDED_HEADERS was acknowledged: replies come in chunks.
	Structured bool
	// Extended is set once NBD_OPT_EXTENDED_HEADERS was acknowledged:
	// requests and reply chunks have 32-byte headers.
	Extended bool
	// MaxReplyData bounds the data of one option reply or one structured
	// chunk the client accepts; 0 means 64 MiB.
	MaxReplyData uint32
	// DiscardData has ReadReply read and drop READ data instead of
	// keeping it in Reply.Data: a load generator's client holds no copy.
	DiscardData bool

	mu    sync.Mutex
	reads map[uint64]uint32 // lengths of simple-reply READs in flight, by cookie
}

// New returns a client on rw that reads through a buffer. It does no I/O:
// see Start.
func New(rw io.ReadWriter) *Conn {
	br := bufio.NewReaderSize(rw, 64<<10)
	return &Conn{rw: rw, r: br, br: br, reads: map[uint64]uint32{}}
}

// Unbuffered returns a client on rw that never reads past what the
// protocol asks for.
func Unbuffered(rw io.ReadWriter) *Conn {
	return &Conn{rw: rw, r: rw, reads: map[uint64]uint32{}}
}

// Dial connects to addr, runs Start and selects export name with
// NBD_OPT_GO. The connection has the given timeout for all of that, and
// none afterwards.
func Dial(network, addr, name string, timeout time.Duration) (*Conn, net.Conn, Export, error) {
	nc, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, nil, Export{}, err
	}
	nc.SetDeadline(time.Now().Add(timeout))
	c := New(nc)
	exp, err := c.Open(name)
	if err != nil {
		nc.Close()
		return nil, nil, Export{}, err
	}
	nc.SetDeadline(time.Time{})
	return c, nc, exp, nil
}

// Reader is what the client reads the connection through: for a caller
// that needs bytes the protocol does not frame (a test's stray bytes).
func (c *Conn) Reader() io.Reader { return c.r }

// Buffered returns the bytes read from the connection and not yet taken,
// none for an Unbuffered client.
func (c *Conn) Buffered() int {
	if c.br == nil {
		return 0
	}
	return c.br.Buffered()
}

func (c *Conn) maxData() uint32 {
	if c.MaxReplyData == 0 {
		return 64 << 20
	}
	return c.MaxReplyData
}

// Write writes b to the connection whole, after any write in progress.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.rw.Write(b)
}

// ErrOldstyle is returned by ReadGreeting for a server that speaks
// oldstyle negotiation (proto.md "Oldstyle negotiation").
var ErrOldstyle = errors.New("nbd: oldstyle negotiation")

// oldstyleMagic follows NBDMAGIC in an oldstyle greeting.
const oldstyleMagic uint64 = 0x00420281861253

// ReadGreeting reads the server's greeting and returns its handshake
// flags.
func (c *Conn) ReadGreeting() (protocol.HandshakeFlag, error) {
	var g [protocol.HandshakeSize]byte
	if _, err := io.ReadFull(c.r, g[:]); err != nil {
		return 0, fmt.Errorf("read greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(g[0:]); m != protocol.NBDMagic {
		return 0, fmt.Errorf("%w: greeting magic %#x", protocol.ErrBadMagic, m)
	}
	switch m := binary.BigEndian.Uint64(g[8:]); m {
	case protocol.IHaveOpt:
	case oldstyleMagic:
		return 0, ErrOldstyle
	default:
		return 0, fmt.Errorf("%w: newstyle magic %#x", protocol.ErrBadMagic, m)
	}
	return protocol.HandshakeFlag(binary.BigEndian.Uint16(g[16:])), nil
}

// SendClientFlags sends the client flags.
func (c *Conn) SendClientFlags(f protocol.ClientFlag) error {
	if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(f))); err != nil {
		return fmt.Errorf("write client flags: %w", err)
	}
	return nil
}

// Start reads the greeting and answers with the client flags the server
// offers of FIXED_NEWSTYLE and NO_ZEROES, which it returns.
func (c *Conn) Start() (protocol.ClientFlag, error) {
	hf, err := c.ReadGreeting()
	if err != nil {
		return 0, err
	}
	var cf protocol.ClientFlag
	if hf&protocol.FlagFixedNewstyle != 0 {
		cf |= protocol.ClientFixedNewstyle
	}
	if hf&protocol.FlagNoZeroes != 0 {
		cf |= protocol.ClientNoZeroes
	}
	return cf, c.SendClientFlags(cf)
}

// Open runs Start and selects export name with NBD_OPT_GO.
func (c *Conn) Open(name string) (Export, error) {
	if _, err := c.Start(); err != nil {
		return Export{}, err
	}
	return c.Go(name)
}
