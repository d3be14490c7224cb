package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// client is the NBD client side of a test: a connection plus intent-level
// helpers that fail the test on any unexpected byte.
type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader

	noZeroes   bool
	structured bool
	size       uint64
	flags      protocol.TransmissionFlag

	// readLen holds the length of every simple-reply READ in flight, so a
	// reply can be parsed in whatever order it arrives.
	mu      sync.Mutex
	readLen map[uint64]uint32
}

func newClient(t testing.TB, nc net.Conn) *client {
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), readLen: make(map[uint64]uint32)}
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
	if _, err := c.nc.Write(p); err != nil {
		c.t.Fatalf("writing %d bytes to the server: %v", len(p), err)
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
	c.writeRaw(binary.BigEndian.AppendUint32(nil, uint32(f)))
}

// start reads the greeting and answers with FIXED_NEWSTYLE|NO_ZEROES.
func (c *client) start() {
	c.t.Helper()
	c.wantGreeting()
	c.sendClientFlags(protocol.ClientFixedNewstyle | protocol.ClientNoZeroes)
}

func (c *client) sendOption(opt protocol.Opt, data []byte) {
	c.t.Helper()
	var hdr [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: opt, Length: uint32(len(data))}.Put(&hdr)
	c.writeRaw(append(hdr[:], data...))
}

// optReply is one option reply.
type optReply struct {
	opt  protocol.Opt
	typ  protocol.Rep
	data []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	var hdr [protocol.OptionReplyHeaderSize]byte
	c.readFull(hdr[:])
	h, err := protocol.DecodeOptionReplyHeader(&hdr)
	if err != nil {
		c.t.Fatalf("option reply header %x: %v", hdr, err)
	}
	if h.Length > 1<<20 {
		c.t.Fatalf("option reply of %d bytes; want a sane length", h.Length)
	}
	data := make([]byte, h.Length)
	c.readFull(data)
	return optReply{h.Opt, h.Type, data}
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
	c.sendOption(opt, protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: name, Infos: infos}))
	var ei exportInfo
	sawExport := false
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply to %v: got option %v", opt, r.opt)
		}
		if r.typ != protocol.RepInfo {
			if r.typ == protocol.RepAck && !sawExport {
				c.t.Fatalf("%v %q: ACK without NBD_INFO_EXPORT", opt, name)
			}
			if r.typ == protocol.RepAck && opt == protocol.OptGo {
				c.size, c.flags = ei.size, ei.flags
			}
			return ei, r
		}
		if len(r.data) < 2 {
			c.t.Fatalf("NBD_REP_INFO of %d bytes", len(r.data))
		}
		typ := protocol.Info(binary.BigEndian.Uint16(r.data))
		body := r.data[2:]
		ei.infos = append(ei.infos, typ)
		switch typ {
		case protocol.InfoExport:
			require.Len(c.t, body, 10, "NBD_INFO_EXPORT body")
			ei.size = binary.BigEndian.Uint64(body)
			ei.flags = protocol.TransmissionFlag(binary.BigEndian.Uint16(body[8:]))
			sawExport = true
		case protocol.InfoName:
			s := string(body)
			ei.name = &s
		case protocol.InfoDescription:
			s := string(body)
			ei.description = &s
		case protocol.InfoBlockSize:
			require.Len(c.t, body, 12, "NBD_INFO_BLOCK_SIZE body")
			ei.blockSize = &protocol.BlockSize{
				Min:       binary.BigEndian.Uint32(body),
				Preferred: binary.BigEndian.Uint32(body[4:]),
				Max:       binary.BigEndian.Uint32(body[8:]),
			}
		default:
			c.t.Fatalf("server sent info type %v nobody asked for", typ)
		}
	}
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
	c.sendOption(protocol.OptList, nil)
	var names []string
	c.collect(protocol.OptList, protocol.RepServer, func(data []byte) {
		require.GreaterOrEqual(c.t, len(data), 4, "NBD_REP_SERVER data")
		n := binary.BigEndian.Uint32(data)
		require.LessOrEqual(c.t, int(n), len(data)-4, "NBD_REP_SERVER name length")
		names = append(names, string(data[4:4+n]))
	})
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
	c.sendOption(protocol.OptExportName, []byte(name))
	var b [protocol.ExportNameReplySize]byte
	c.readFull(b[:])
	c.size = binary.BigEndian.Uint64(b[:])
	c.flags = protocol.TransmissionFlag(binary.BigEndian.Uint16(b[8:]))
	if !c.noZeroes {
		pad := make([]byte, protocol.ExportNamePadding)
		c.readFull(pad)
		if !bytes.Equal(pad, make([]byte, protocol.ExportNamePadding)) {
			c.t.Fatalf("EXPORT_NAME padding: got %x; want 124 zero bytes", pad)
		}
	}
}

func (c *client) structuredReply() {
	c.t.Helper()
	c.option(protocol.OptStructuredReply, nil, protocol.RepAck)
	c.structured = true
}

// metaContext sends LIST or SET_META_CONTEXT and returns the contexts
// the server replied with (by name, and the ID of each).
func (c *client) metaContext(opt protocol.Opt, name string, queries ...string) map[string]uint32 {
	c.t.Helper()
	c.sendOption(opt, protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: name, Queries: queries}))
	got := map[string]uint32{}
	c.collect(opt, protocol.RepMetaContext, func(data []byte) {
		require.GreaterOrEqual(c.t, len(data), 4, "NBD_REP_META_CONTEXT data")
		got[string(data[4:])] = binary.BigEndian.Uint32(data)
	})
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
}

// handshakeSR enters transmission on name with structured replies and
// base:allocation.
func (c *client) handshakeSR(name string) {
	c.t.Helper()
	c.start()
	c.structuredReply()
	got := c.setMeta(name, protocol.MetaContextBaseAllocation)
	require.Equal(c.t, map[string]uint32{protocol.MetaContextBaseAllocation: baseAllocationID}, got, "SET_META_CONTEXT")
	c.goExport(name)
}

// ---- transmission ----

// send writes one request and its payload in one write.
func (c *client) send(req protocol.Request, payload []byte) {
	c.t.Helper()
	if err := c.trySend(req, payload); err != nil {
		c.t.Fatalf("sending %v %d: %v", req.Type, req.Cookie, err)
	}
}

// trySend is send for goroutines other than the test's, which must not
// call t.Fatal.
func (c *client) trySend(req protocol.Request, payload []byte) error {
	var hdr [protocol.RequestSize]byte
	req.Put(&hdr)
	if req.Type == protocol.CmdRead && !c.structured {
		c.mu.Lock()
		c.readLen[req.Cookie] = req.Length
		c.mu.Unlock()
	}
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	_, err := c.nc.Write(append(hdr[:], payload...))
	return err
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
				errc <- fmt.Errorf("sending %v %d: %w", req.Type, req.Cookie, err)
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
	length uint32
	flags  uint32
}

// reply is one transmission reply, simple or structured, as the client
// saw it.
type reply struct {
	cookie     uint64
	errno      protocol.Errno
	structured bool
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
	var magic [4]byte
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	p, err := c.br.Peek(4)
	if err != nil {
		c.t.Fatalf("reading a reply: %v", err)
	}
	copy(magic[:], p)
	switch binary.BigEndian.Uint32(magic[:]) {
	case protocol.SimpleReplyMagic:
		return c.readSimple()
	case protocol.StructuredReplyMagic:
		return c.readStructured()
	}
	c.t.Fatalf("reply magic %x; want a simple or structured reply", magic)
	return reply{}
}

// tryReadReply reads one simple reply without failing the test, for
// goroutines other than the test's.
func (c *client) tryReadReply() (reply, error) {
	var hdr [protocol.SimpleReplySize]byte
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return reply{}, err
	}
	sr, err := protocol.DecodeSimpleReply(&hdr)
	if err != nil {
		return reply{}, err
	}
	r := reply{cookie: sr.Cookie, errno: sr.Error}
	c.mu.Lock()
	n, isRead := c.readLen[sr.Cookie]
	delete(c.readLen, sr.Cookie)
	c.mu.Unlock()
	if isRead && sr.Error == 0 {
		r.data = make([]byte, n)
		_, err = io.ReadFull(c.br, r.data)
	}
	return r, err
}

func (c *client) readSimple() reply {
	c.t.Helper()
	r, err := c.tryReadReply()
	if err != nil {
		c.t.Fatalf("reading a simple reply: %v", err)
	}
	return r
}

func (c *client) readStructured() reply {
	c.t.Helper()
	r := reply{structured: true}
	for first := true; ; first = false {
		var hdr [protocol.ChunkHeaderSize]byte
		c.readFull(hdr[:])
		ch, err := protocol.DecodeChunkHeader(&hdr)
		require.NoError(c.t, err)
		if !first && ch.Cookie != r.cookie {
			c.t.Fatalf("chunk for cookie %d inside the reply to %d", ch.Cookie, r.cookie)
		}
		r.cookie = ch.Cookie
		if ch.Length > 64<<20 {
			c.t.Fatalf("chunk of %d bytes", ch.Length)
		}
		payload := make([]byte, ch.Length)
		c.readFull(payload)
		r.types = append(r.types, ch.Type)
		c.parseChunk(&r, ch.Type, payload)
		if ch.Flags&protocol.ReplyFlagDone != 0 {
			return r
		}
	}
}

func (c *client) parseChunk(r *reply, typ protocol.ReplyType, p []byte) {
	c.t.Helper()
	switch typ {
	case protocol.ReplyTypeNone:
		require.Empty(c.t, p, "NBD_REPLY_TYPE_NONE payload")
	case protocol.ReplyTypeOffsetData:
		require.GreaterOrEqual(c.t, len(p), 8, "OFFSET_DATA payload")
		c.place(r, binary.BigEndian.Uint64(p), p[8:])
	case protocol.ReplyTypeOffsetHole:
		require.Len(c.t, p, protocol.OffsetHoleSize, "OFFSET_HOLE payload")
		c.place(r, binary.BigEndian.Uint64(p), make([]byte, binary.BigEndian.Uint32(p[8:])))
	case protocol.ReplyTypeBlockStatus:
		require.GreaterOrEqual(c.t, len(p), 4, "BLOCK_STATUS payload")
		require.Zero(c.t, (len(p)-4)%8, "BLOCK_STATUS payload length")
		r.contextID = binary.BigEndian.Uint32(p)
		for b := p[4:]; len(b) > 0; b = b[8:] {
			r.extents = append(r.extents, extent{binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])})
		}
	case protocol.ReplyTypeError, protocol.ReplyTypeErrorOffset:
		require.GreaterOrEqual(c.t, len(p), 6, "error chunk payload")
		r.errno = protocol.Errno(binary.BigEndian.Uint32(p))
		n := int(binary.BigEndian.Uint16(p[4:]))
		require.LessOrEqual(c.t, 6+n, len(p), "error message length")
		r.msg = string(p[6 : 6+n])
		if typ == protocol.ReplyTypeErrorOffset {
			require.Len(c.t, p, 6+n+8, "ERROR_OFFSET payload")
			r.errOffset = binary.BigEndian.Uint64(p[6+n:])
		}
	default:
		c.t.Fatalf("unexpected chunk type %v", typ)
	}
}

// place puts a chunk's data at its offset within r.data. Chunks of one
// READ may come in any order but must not overlap.
func (c *client) place(r *reply, off uint64, b []byte) {
	if r.data == nil {
		r.dataOff = off
	}
	if off < r.dataOff {
		grown := make([]byte, int(r.dataOff-off)+len(r.data))
		copy(grown[r.dataOff-off:], r.data)
		r.data, r.dataOff = grown, off
	}
	end := int(off-r.dataOff) + len(b)
	if end > len(r.data) {
		r.data = append(r.data, make([]byte, end-len(r.data))...)
	}
	copy(r.data[off-r.dataOff:], b)
}

// wantReply reads the next reply and checks its cookie and errno.
func (c *client) wantReply(cookie uint64, errno protocol.Errno) reply {
	c.t.Helper()
	r := c.readReply()
	if r.cookie != cookie || r.errno != errno {
		c.t.Fatalf("reply: got cookie %d %v (%q); want cookie %d %v", r.cookie, r.errno, r.msg, cookie, errno)
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
	var out []protocol.ReplyType
	for _, t := range types {
		if t != protocol.ReplyTypeNone {
			out = append(out, t)
		}
	}
	return out
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
	require.Equal(c.t, []protocol.ReplyType{protocol.ReplyTypeBlockStatus}, r.types, "BLOCK_STATUS chunks")
	require.Equal(c.t, uint32(baseAllocationID), r.contextID, "BLOCK_STATUS context ID")
	return r.extents
}
