package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// client is the NBD client side of a test: nbdclient, which speaks the
// protocol, plus intent-level helpers that fail the test on any
// unexpected byte.
type client struct {
	t   testing.TB
	nc  net.Conn
	nbd *nbdclient.Conn
	br  *bufio.Reader // the client's read buffer, for raw reads

	noZeroes   bool
	structured bool
	extended   bool
	size       uint64
	flags      protocol.TransmissionFlag
}

func newClient(t testing.TB, nc net.Conn) *client {
	c := &client{t: t}
	c.setConn(nc)
	return c
}

// setConn makes nc the client's connection, as after STARTTLS.
func (c *client) setConn(nc net.Conn) {
	c.nc, c.nbd = nc, nbdclient.New(nc)
	c.br = c.nbd.Reader().(*bufio.Reader)
	c.structured, c.extended = false, false
}

func (c *client) readFull(p []byte) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("reading %d bytes from the server: %v", len(p), err)
	}
}

func (c *client) writeRaw(p []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := c.nbd.Write(p); err != nil {
		c.t.Fatalf("writing %d bytes to the server: %v", len(p), err)
	}
}

// deadline bounds the next exchange with the server.
func (c *client) deadline() { c.nc.SetDeadline(time.Now().Add(ioTimeout)) }

// check fails the test on err.
func (c *client) check(err error, what string, args ...any) {
	c.t.Helper()
	if err != nil {
		c.t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}

// wantClosed reads until the server closes and fails if it sends anything.
func (c *client) wantClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	var b [1]byte
	n, err := c.br.Read(b[:])
	switch {
	case n > 0:
		rest, _ := io.ReadAll(io.LimitReader(c.br, 64))
		c.t.Fatalf("got bytes %x%x from the server; want the connection closed", b[:n], rest)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.t.Fatalf("connection still open after %v; want it closed", ioTimeout)
	case !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, net.ErrClosed):
		c.t.Fatalf("read: got %v; want EOF", err)
	}
}

// ---- handshake ----

// greeting is the server's first message: NBDMAGIC, IHAVEOPT, and the
// handshake flags FIXED_NEWSTYLE|NO_ZEROES.
const greeting = "NBDMAGIC" + "IHAVEOPT" + "\x00\x03"

func (c *client) wantGreeting() {
	c.t.Helper()
	var b [protocol.HandshakeSize]byte
	c.readFull(b[:])
	if string(b[:]) != greeting {
		c.t.Fatalf("greeting: got %q; want %q", b[:], greeting)
	}
}

func (c *client) sendClientFlags(f protocol.ClientFlag) {
	c.t.Helper()
	c.noZeroes = f&protocol.ClientNoZeroes != 0
	c.deadline()
	c.check(c.nbd.SendClientFlags(f), "client flags")
}

// start reads the greeting and answers with FIXED_NEWSTYLE|NO_ZEROES.
func (c *client) start() {
	c.t.Helper()
	c.wantGreeting()
	c.sendClientFlags(protocol.ClientFixedNewstyle | protocol.ClientNoZeroes)
}

func (c *client) sendOption(opt protocol.Opt, data []byte) {
	c.t.Helper()
	c.deadline()
	c.check(c.nbd.SendOption(opt, data), "send %v", opt)
}

// optReply is one option reply.
type optReply struct {
	opt  protocol.Opt
	typ  protocol.Rep
	data []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	c.deadline()
	r, err := c.nbd.ReadOptionReply()
	c.check(err, "option reply")
	return optReply{r.Opt, r.Type, r.Data}
}

// wantOptReply reads one reply and checks its option and type.
func (c *client) wantOptReply(opt protocol.Opt, typ protocol.Rep) []byte {
	c.t.Helper()
	r := c.readOptReply()
	if r.opt != opt || r.typ != typ {
		c.t.Fatalf("option reply: got %v %v %q; want %v %v", r.opt, r.typ, r.data, opt, typ)
	}
	return r.data
}

// option sends opt and checks that its (only) reply is typ.
func (c *client) option(opt protocol.Opt, data []byte, typ protocol.Rep) []byte {
	c.t.Helper()
	c.sendOption(opt, data)
	return c.wantOptReply(opt, typ)
}

// exportInfo is what NBD_OPT_INFO and NBD_OPT_GO report.
type exportInfo struct {
	size        uint64
	flags       protocol.TransmissionFlag
	name        *string
	description *string
	blockSize   *protocol.BlockSize
	infos       []protocol.Info // in the order received
}

// infoOrGo sends NBD_OPT_INFO or NBD_OPT_GO and collects the NBD_REP_INFO
// replies up to the ACK. It fails on an error reply: see infoOrGoErr.
func (c *client) infoOrGo(opt protocol.Opt, name string, infos ...protocol.Info) exportInfo {
	c.t.Helper()
	ei, rep := c.infoOrGoErr(opt, name, infos...)
	if rep.typ.IsError() {
		c.t.Fatalf("%v %q: got %v %q; want NBD_REP_ACK", opt, name, rep.typ, rep.data)
	}
	return ei
}

func (c *client) infoOrGoErr(opt protocol.Opt, name string, infos ...protocol.Info) (exportInfo, optReply) {
	c.t.Helper()
	c.deadline()
	query := c.nbd.Go
	if opt == protocol.OptInfo {
		query = c.nbd.Info
	}
	exp, err := query(name, infos...)
	var refused *nbdclient.RefusedError
	if errors.As(err, &refused) {
		return exportInfo{}, optReply{refused.Opt, refused.Rep, []byte(refused.Message)}
	}
	c.check(err, "%v %q", opt, name)
	ei := exportInfo{size: exp.Size, flags: exp.Flags}
	for _, r := range exp.Infos {
		ei.infos = append(ei.infos, r.Type)
		switch r.Type {
		case protocol.InfoExport:
		case protocol.InfoName:
			ei.name = &r.Text
		case protocol.InfoDescription:
			ei.description = &r.Text
		case protocol.InfoBlockSize:
			ei.blockSize = &r.BlockSize
		default:
			c.t.Fatalf("server sent info type %v nobody asked for", r.Type)
		}
	}
	if opt == protocol.OptGo {
		c.size, c.flags = ei.size, ei.flags
	}
	return ei, optReply{opt, protocol.RepAck, nil}
}

// goExport selects name with NBD_OPT_GO; the connection is then in the
// transmission phase.
func (c *client) goExport(name string, infos ...protocol.Info) exportInfo {
	c.t.Helper()
	return c.infoOrGo(protocol.OptGo, name, infos...)
}

func (c *client) info(name string, infos ...protocol.Info) exportInfo {
	c.t.Helper()
	return c.infoOrGo(protocol.OptInfo, name, infos...)
}

// list sends NBD_OPT_LIST and returns the names announced.
func (c *client) list() []string {
	c.t.Helper()
	c.deadline()
	servers, err := c.nbd.List()
	c.check(err, "NBD_OPT_LIST")
	var names []string
	for _, s := range servers {
		names = append(names, s.Name)
	}
	return names
}

// collect reads the replies to opt up to its ACK and hands the data of
// each reply of type typ to fn; any other reply fails the test.
func (c *client) collect(opt protocol.Opt, typ protocol.Rep, fn func(data []byte)) {
	c.t.Helper()
	for {
		r := c.readOptReply()
		switch {
		case r.opt == opt && r.typ == protocol.RepAck:
			return
		case r.opt == opt && r.typ == typ:
			fn(r.data)
		default:
			c.t.Fatalf("reply to %v: got %v %v %q; want %v or NBD_REP_ACK", opt, r.opt, r.typ, r.data, typ)
		}
	}
}

// exportName selects name with NBD_OPT_EXPORT_NAME and checks the padding
// that follows the reply unless NO_ZEROES was negotiated.
func (c *client) exportName(name string) {
	c.t.Helper()
	c.deadline()
	exp, err := c.nbd.ExportName(name, c.noZeroes)
	c.check(err, "NBD_OPT_EXPORT_NAME %q", name)
	c.size, c.flags = exp.Size, exp.Flags
}

func (c *client) structuredReply() {
	c.t.Helper()
	c.deadline()
	c.check(c.nbd.StructuredReply(), "NBD_OPT_STRUCTURED_REPLY")
	c.structured = true
}

func (c *client) extendedHeaders() {
	c.t.Helper()
	c.deadline()
	c.check(c.nbd.ExtendedHeaders(), "NBD_OPT_EXTENDED_HEADERS")
	c.structured, c.extended = true, true
}

// metaContext sends LIST or SET_META_CONTEXT and returns the contexts
// the server replied with (by name, and the ID of each).
func (c *client) metaContext(opt protocol.Opt, name string, queries ...string) map[string]uint32 {
	c.t.Helper()
	c.deadline()
	ctxs, err := c.nbd.MetaContext(opt, name, queries...)
	c.check(err, "%v %q", opt, name)
	got := map[string]uint32{}
	for _, m := range ctxs {
		got[m.Name] = m.ID
	}
	return got
}

func (c *client) setMeta(name string, queries ...string) map[string]uint32 {
	c.t.Helper()
	return c.metaContext(protocol.OptSetMetaContext, name, queries...)
}

func (c *client) listMeta(name string, queries ...string) map[string]uint32 {
	c.t.Helper()
	return c.metaContext(protocol.OptListMetaContext, name, queries...)
}

// abort sends NBD_OPT_ABORT and expects an ACK and then the close.
func (c *client) abort() {
	c.t.Helper()
	c.option(protocol.OptAbort, nil, protocol.RepAck)
	c.wantClosed()
}

// handshake enters transmission on name with simple replies.
func (c *client) handshake(name string) {
	c.t.Helper()
	c.start()
	c.goExport(name)
	c.nc.SetDeadline(time.Time{})
}

// handshakeSR enters transmission on name with structured replies and
// base:allocation.
func (c *client) handshakeSR(name string) {
	c.t.Helper()
	c.handshakeChunked(name, c.structuredReply)
}

// handshakeExt enters transmission on name with extended headers and
// base:allocation.
func (c *client) handshakeExt(name string) {
	c.t.Helper()
	c.handshakeChunked(name, c.extendedHeaders)
}

// handshakeChunked enters transmission on name after negotiate, which
// asks for reply chunks, and with base:allocation.
func (c *client) handshakeChunked(name string, negotiate func()) {
	c.t.Helper()
	c.start()
	negotiate()
	got := c.setMeta(name, protocol.MetaContextBaseAllocation)
	require.Equal(c.t, map[string]uint32{protocol.MetaContextBaseAllocation: baseAllocationID}, got, "SET_META_CONTEXT")
	c.goExport(name)
	c.nc.SetDeadline(time.Time{})
}

// ---- transmission ----

// send writes one request and its payload in one write.
func (c *client) send(req protocol.Request, payload []byte) {
	c.t.Helper()
	if err := c.trySend(req, payload); err != nil {
		c.t.Fatal(err)
	}
}

// sendExt writes one extended request as it is, and its payload.
func (c *client) sendExt(req protocol.ExtendedRequest, payload []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := c.nbd.SendExtended(req, payload); err != nil {
		c.t.Fatal(err)
	}
}

// trySend is send for goroutines other than the test's, which must not
// call t.Fatal.
func (c *client) trySend(req protocol.Request, payload []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	return c.nbd.Send(req, payload)
}

// sendAsync sends reqs (payloads[i] after reqs[i], if given) from another
// goroutine and returns a function that waits for it. Tests need it to
// pipeline more than the server will take before its replies are read:
// net.Pipe has no buffer, and the server rightly stops reading when a
// connection is full.
func (c *client) sendAsync(reqs []protocol.Request, payloads ...[]byte) (wait func()) {
	errc := c.sendAll(reqs, payloads)
	return func() {
		c.t.Helper()
		if err := <-errc; err != nil {
			c.t.Fatal(err)
		}
	}
}

// sendAll sends reqs (payloads[i] after reqs[i], if given) from a new
// goroutine and reports the result on the channel returned.
func (c *client) sendAll(reqs []protocol.Request, payloads [][]byte) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for i, req := range reqs {
			var p []byte
			if i < len(payloads) {
				p = payloads[i]
			}
			if err := c.trySend(req, p); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	return errc
}

// cmd sends a request without payload.
func (c *client) cmd(typ protocol.Cmd, cookie, off uint64, n uint32, flags ...protocol.CmdFlag) {
	c.t.Helper()
	c.send(protocol.Request{Type: typ, Flags: orFlags(flags), Cookie: cookie, Offset: off, Length: n}, nil)
}

func (c *client) read(cookie, off uint64, n uint32, flags ...protocol.CmdFlag) {
	c.t.Helper()
	c.cmd(protocol.CmdRead, cookie, off, n, flags...)
}

func (c *client) write(cookie, off uint64, data []byte, flags ...protocol.CmdFlag) {
	c.t.Helper()
	c.send(protocol.Request{Type: protocol.CmdWrite, Flags: orFlags(flags), Cookie: cookie, Offset: off, Length: uint32(len(data))}, data)
}

func (c *client) flush(cookie uint64) {
	c.t.Helper()
	c.cmd(protocol.CmdFlush, cookie, 0, 0)
}

func (c *client) trim(cookie, off uint64, n uint32, flags ...protocol.CmdFlag) {
	c.t.Helper()
	c.cmd(protocol.CmdTrim, cookie, off, n, flags...)
}

func (c *client) zero(cookie, off uint64, n uint32, flags ...protocol.CmdFlag) {
	c.t.Helper()
	c.cmd(protocol.CmdWriteZeroes, cookie, off, n, flags...)
}

func (c *client) cache(cookie, off uint64, n uint32) {
	c.t.Helper()
	c.cmd(protocol.CmdCache, cookie, off, n)
}

func (c *client) blockStatus(cookie, off uint64, n uint32, flags ...protocol.CmdFlag) {
	c.t.Helper()
	c.cmd(protocol.CmdBlockStatus, cookie, off, n, flags...)
}

func (c *client) disc() {
	c.t.Helper()
	c.cmd(protocol.CmdDisc, 0, 0, 0)
}

func orFlags(flags []protocol.CmdFlag) protocol.CmdFlag {
	var f protocol.CmdFlag
	for _, x := range flags {
		f |= x
	}
	return f
}

// extent is one base:allocation block descriptor.
type extent struct {
	length uint64
	flags  uint32
}

// reply is one transmission reply, simple or structured, as the client
// saw it.
type reply struct {
	cookie     uint64
	errno      protocol.Errno
	structured bool
	extended   bool                 // extended chunks, each carrying offset
	offset     uint64               // the request offset the extended chunks carried
	types      []protocol.ReplyType // chunk types, in order
	data       []byte               // READ data (OFFSET_DATA and OFFSET_HOLE assembled)
	dataOff    uint64               // offset of data[0]
	msg        string               // structured error message
	errOffset  uint64               // an ERROR_OFFSET chunk's offset
	contextID  uint32
	extents    []extent
}

// readReply reads the next reply, whatever its cookie. A simple READ reply
// carries as many bytes as the request asked for; structured chunks are
// read up to the one flagged DONE.
func (c *client) readReply() reply {
	c.t.Helper()
	r, err := c.tryReadReply()
	c.check(err, "reading a reply")
	return r
}

// tryReadReply is readReply for goroutines other than the test's.
func (c *client) tryReadReply() (reply, error) {
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	r, err := c.nbd.ReadReply()
	out := reply{cookie: r.Cookie, errno: r.Errno, structured: r.Structured, extended: r.Extended, offset: r.Offset,
		types: r.Types, data: r.Data, dataOff: r.DataOff, msg: r.Message, errOffset: r.ErrOffset, contextID: r.ContextID}
	for _, e := range r.Extents {
		out.extents = append(out.extents, extent{uint64(e.Length), e.Flags})
	}
	for _, e := range r.ExtentsExt {
		if e.Status>>32 != 0 {
			return out, fmt.Errorf("base:allocation status %#x has upper bits set", e.Status)
		}
		out.extents = append(out.extents, extent{e.Length, uint32(e.Status)})
	}
	return out, err
}

// wantReply reads the next reply and checks its cookie and errno, and
// that its form is the one negotiated: under extended headers every
// reply is extended chunks.
func (c *client) wantReply(cookie uint64, errno protocol.Errno) reply {
	c.t.Helper()
	r := c.readReply()
	if r.cookie != cookie || r.errno != errno {
		c.t.Fatalf("reply: got cookie %d %v (%q); want cookie %d %v", r.cookie, r.errno, r.msg, cookie, errno)
	}
	if r.extended != c.extended {
		c.t.Fatalf("reply %d: extended chunks %v; want %v", cookie, r.extended, c.extended)
	}
	return r
}

// wantRead reads a successful READ reply and checks its data.
func (c *client) wantRead(cookie uint64, want []byte) {
	c.t.Helper()
	r := c.wantReply(cookie, protocol.EOK)
	if !bytes.Equal(r.data, want) {
		c.t.Fatalf("READ %d: got %d bytes %.32x…; want %d bytes %.32x…", cookie, len(r.data), r.data, len(want), want)
	}
}

// wantStructuredRead reads a structured READ reply and checks that it
// starts at off, holds want, and uses only data (and hole) chunks.
func (c *client) wantStructuredRead(cookie, off uint64, want []byte) reply {
	c.t.Helper()
	r := c.wantReply(cookie, protocol.EOK)
	if !r.structured {
		c.t.Fatalf("READ %d: got a simple reply; want a structured one", cookie)
	}
	if r.dataOff != off || !bytes.Equal(r.data, want) {
		c.t.Fatalf("READ %d: got %d bytes at %d; want %d bytes at %d (equal: %v)", cookie, len(r.data), r.dataOff, len(want), off, bytes.Equal(r.data, want))
	}
	return r
}

// contentChunks drops the NONE chunks from types: a reply whose data may
// still fail as it goes out ends with one.
func contentChunks(types []protocol.ReplyType) []protocol.ReplyType {
	return slices.DeleteFunc(slices.Clone(types), func(t protocol.ReplyType) bool { return t == protocol.ReplyTypeNone })
}

// wantStructuredError reads a structured error reply and returns its
// message.
func (c *client) wantStructuredError(cookie uint64, errno protocol.Errno) string {
	c.t.Helper()
	r := c.wantReply(cookie, errno)
	if !r.structured || len(r.types) == 0 || !r.types[len(r.types)-1].IsError() {
		c.t.Fatalf("reply %d: got chunks %v; want an error chunk", cookie, r.types)
	}
	return r.msg
}

// wantBlockStatus reads a BLOCK_STATUS reply and returns its extents.
func (c *client) wantBlockStatus(cookie uint64) []extent {
	c.t.Helper()
	r := c.wantReply(cookie, protocol.EOK)
	typ := protocol.ReplyTypeBlockStatus
	if c.extended {
		typ = protocol.ReplyTypeBlockStatusExt
	}
	require.Equal(c.t, []protocol.ReplyType{typ}, r.types, "BLOCK_STATUS chunks")
	require.Equal(c.t, uint32(baseAllocationID), r.contextID, "BLOCK_STATUS context ID")
	return r.extents
}
