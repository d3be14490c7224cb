package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
)

// transcript is the io.ReadWriteCloser a fuzz input runs through: reads
// play the client's bytes, writes are counted and dropped. It is not a
// net.Conn, so ServeConn runs without deadlines, as it would over stdin.
type transcript struct {
	mu      sync.Mutex
	r       io.Reader
	closed  bool
	written atomic.Int64

	keep bool // keep what the server writes in out
	omu  sync.Mutex
	out  bytes.Buffer
}

func (t *transcript) Read(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, net.ErrClosed
	}
	return t.r.Read(p)
}

func (t *transcript) Write(p []byte) (int, error) {
	t.written.Add(int64(len(p)))
	if t.keep {
		t.omu.Lock()
		t.out.Write(p)
		t.omu.Unlock()
	}
	return len(p), nil
}

func (t *transcript) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return nil
}

// Bounds for one fuzz input.
const (
	fuzzExportSize = 256 << 10
	fuzzMaxRequest = 128 << 10
	fuzzTimeLimit  = 5 * time.Second
	// fuzzAllocSlack is what one connection may allocate whatever its
	// input: read buffer, option buffer, payload buffers, memory chunks.
	fuzzAllocSlack = 8 << 20
)

// fuzzServer is shared by every input of a fuzz run, as one server is
// shared by its clients.
var fuzzServer = sync.OnceValue(func() *Server {
	budget, _ := bufstrategy.NewBudget(1 << 20)
	bufs, err := bufstrategy.New(bufstrategy.NamePool, bufstrategy.Config{MaxRequest: fuzzMaxRequest, Budget: budget, ReclaimTick: -1})
	if err != nil {
		panic(err)
	}
	return &Server{
		Exports: []Export{
			{Name: "a", Description: "fuzz", Backend: backend.NewMemory(fuzzExportSize)},
			{Name: "ro", ReadOnly: true, Backend: backend.NewMemory(fuzzExportSize)},
			{Name: "bare", Backend: bare{backend.NewMemory(fuzzExportSize)}},
		},
		DefaultExport:  "a",
		MaxRequestSize: fuzzMaxRequest,
		Buffers:        bufs,
		Logger:         slog.New(slog.DiscardHandler),
	}
})

// serveTranscript runs one client byte stream through ServeConn and fails
// on a hang, or on an allocation out of proportion to the input.
func serveTranscript(t *testing.T, data []byte) []byte {
	return serveTranscriptFrom(t, data, bytes.NewReader(data))
}

// serveTranscriptFrom is serveTranscript reading data through r, which
// may deliver it in pieces (iotest.OneByteReader, iotest.HalfReader).
func serveTranscriptFrom(t *testing.T, data []byte, r io.Reader) []byte {
	srv := fuzzServer()
	rwc := &transcript{r: r, keep: true}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), rwc)
	}()
	select {
	case <-done:
	case <-time.After(fuzzTimeLimit):
		buf := make([]byte, 1<<20)
		t.Fatalf("ServeConn still running after %v on a finished transcript\n%s", fuzzTimeLimit, buf[:runtime.Stack(buf, true)])
	}
	runtime.ReadMemStats(&after)
	// Options and payloads are read into reused buffers: allocation grows
	// with the input only through the replies' bookkeeping.
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(fuzzAllocSlack+8*len(data)); got > limit {
		t.Fatalf("ServeConn allocated %d bytes for a %d-byte transcript; want at most %d", got, len(data), limit)
	}
	return rwc.out.Bytes()
}

// FuzzHandshake feeds arbitrary client bytes to a server: it must not
// panic, hang or allocate beyond its bounds. The seeds are transcripts of
// real clients (testdata/fuzz/FuzzHandshake, recorded by TestRecordCorpus
// from nbdinfo, qemu-img and nbdsh) and hand-built ones below.
func FuzzHandshake(f *testing.F) {
	for _, s := range handshakeSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { serveTranscript(t, data) })
}

// FuzzTransmission fuzzes the request stream after a valid handshake. The
// prefix selects the export and the mode (fuzzMode): with structured
// replies or extended headers it selects base:allocation too, so the
// fuzzer spends its time on requests.
func FuzzTransmission(f *testing.F) {
	for _, mode := range fuzzModes {
		for _, s := range requestSeeds(mode) {
			f.Add(s, uint8(mode), uint8(0))
		}
	}
	f.Add(requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Length: 4}, []byte("abcd")), uint8(0), uint8(1))
	f.Fuzz(func(t *testing.T, requests []byte, mode uint8, export uint8) {
		name := [...]string{"a", "ro", "bare"}[int(export)%3]
		m := fuzzMode(mode)
		requests, sent := renumber(requests, m)
		out := serveTranscript(t, append(handshakePrefix(name, m), requests...))
		checkReplies(t, out, sent, m)
	})
}

// fuzzModes are the modes the transmission fuzzers negotiate.
var fuzzModes = []protocol.Mode{protocol.ModeSimple, protocol.ModeStructured, protocol.ModeExtended}

// fuzzMode is the mode a fuzz input's byte selects.
func fuzzMode(b uint8) protocol.Mode { return fuzzModes[int(b)%len(fuzzModes)] }

// sentRequests are the requests of a stream the server reads whole, by
// the cookie renumber gave them.
type sentRequests = map[uint64]protocol.ExtendedRequest

// renumber walks a request stream as the server reads it and gives the
// requests cookies 1, 2, 3..., so that replies can be matched to them. It
// returns the new stream and the requests the server reads whole and must
// answer (DISC excluded); the rest of the stream after the point where the
// server stops reading (bad magic, DISC, an oversized or truncated WRITE)
// is kept as it is.
func renumber(b []byte, mode protocol.Mode) ([]byte, sentRequests) {
	out := make([]byte, 0, len(b))
	sent := sentRequests{}
	for cookie := uint64(1); len(b) >= mode.RequestSize(); cookie++ {
		req, err := mode.DecodeRequest(b)
		if err != nil {
			break
		}
		req.Cookie = cookie
		mode.PutRequest(b, req)
		payload := mode.PayloadLength(req)
		stop := req.Type == protocol.CmdDisc || payload > fuzzMaxRequest
		n := mode.RequestSize() + int(payload)
		stop = stop || n > len(b)
		if stop {
			break
		}
		sent[cookie] = req
		out, b = append(out, b[:n]...), b[n:]
	}
	return append(out, b...), sent
}

// checkReplies parses what the server wrote: the option replies up to
// NBD_OPT_GO's ACK, then one reply per request the server read whole, in
// any order. No reply may be missing, doubled, or for a request never
// sent: no reply is written twice or dropped.
func checkReplies(t *testing.T, out []byte, sent sentRequests, mode protocol.Mode) {
	t.Helper()
	checkRepliesOf(t, out, sent, mode, true)
}

// checkRepliesOf is checkReplies, where all says whether every request
// must be answered: over a socket, a stream that ends without
// NBD_CMD_DISC (the client went away, or broke the protocol) may lose the
// replies still in flight, but never gets a wrong or doubled one; nor,
// with extended headers, a reply of another form or one whose chunks do
// not carry the request's offset.
func checkRepliesOf(t *testing.T, out []byte, sent sentRequests, mode protocol.Mode, all bool) {
	t.Helper()
	if !bytes.HasPrefix(out, []byte(greeting)) {
		t.Fatalf("server output %.18q does not start with the greeting", out)
	}
	out = out[len(greeting):]
	for {
		if len(out) < protocol.OptionReplyHeaderSize {
			t.Fatalf("server output ended in the handshake")
		}
		h, err := protocol.DecodeOptionReplyHeader((*[protocol.OptionReplyHeaderSize]byte)(out))
		if err != nil {
			t.Fatalf("option reply: %v", err)
		}
		out = out[protocol.OptionReplyHeaderSize+int(h.Length):]
		if h.Opt == protocol.OptGo && h.Type == protocol.RepAck {
			break
		}
		if h.Type.IsError() {
			t.Fatalf("%v refused with %v in a valid handshake", h.Opt, h.Type)
		}
	}
	answered := map[uint64]bool{}
	for len(out) > 0 {
		cookie, done, rest, cut := nextReply(t, out, sent, mode)
		if cut && !all {
			break // the hang-up cut the last reply short: it is lost
		}
		if cut {
			t.Fatalf("reply for cookie %d cut short: %d bytes left", cookie, len(out))
		}
		out = rest
		req, ok := sent[cookie]
		switch {
		case !ok:
			t.Fatalf("reply for cookie %d, which no request had", cookie)
		case answered[cookie]:
			t.Fatalf("second reply for %v %d", req.Type, cookie)
		}
		answered[cookie] = done
	}
	for cookie, req := range sent {
		if all && !answered[cookie] {
			t.Fatalf("no reply for %v %d (offset %d, length %d, flags %v)", req.Type, cookie, req.Offset, req.Length, req.Flags)
		}
	}
}

// nextReply consumes one simple reply or one structured chunk; cut
// reports that out ends inside it.
func nextReply(t *testing.T, out []byte, sent sentRequests, mode protocol.Mode) (cookie uint64, done bool, rest []byte, cut bool) {
	t.Helper()
	if len(out) < 4 {
		return 0, false, nil, true
	}
	magic := binary.BigEndian.Uint32(out)
	if (magic == protocol.ExtendedReplyMagic) != (mode == protocol.ModeExtended) {
		t.Fatalf("reply magic %#x in %v mode", magic, mode)
	}
	switch magic {
	case protocol.ExtendedReplyMagic:
		if len(out) < protocol.ExtendedChunkHeaderSize {
			return 0, false, nil, true
		}
		h, _ := protocol.DecodeExtendedChunkHeader((*[protocol.ExtendedChunkHeaderSize]byte)(out))
		if req, ok := sent[h.Cookie]; ok && h.Offset != req.Offset {
			t.Fatalf("%v chunk for %v %d carries offset %d; want the request's, %d", h.Type, req.Type, h.Cookie, h.Offset, req.Offset)
		}
		if h.Length > uint64(len(out)) {
			return h.Cookie, false, nil, true
		}
		n := protocol.ExtendedChunkHeaderSize + int(h.Length)
		if n > len(out) {
			return h.Cookie, false, nil, true
		}
		return h.Cookie, h.Flags&protocol.ReplyFlagDone != 0, out[n:], false
	case protocol.SimpleReplyMagic:
		if len(out) < protocol.SimpleReplySize {
			return 0, false, nil, true
		}
		r, _ := protocol.DecodeSimpleReply((*[protocol.SimpleReplySize]byte)(out))
		n := protocol.SimpleReplySize
		if req := sent[r.Cookie]; req.Type == protocol.CmdRead && r.Error == 0 {
			n += int(req.Length)
		}
		if n > len(out) {
			return r.Cookie, false, nil, true
		}
		return r.Cookie, true, out[n:], false
	case protocol.StructuredReplyMagic:
		if len(out) < protocol.ChunkHeaderSize {
			return 0, false, nil, true
		}
		h, _ := protocol.DecodeChunkHeader((*[protocol.ChunkHeaderSize]byte)(out))
		n := protocol.ChunkHeaderSize + int(h.Length)
		if n > len(out) {
			return h.Cookie, false, nil, true
		}
		return h.Cookie, h.Flags&protocol.ReplyFlagDone != 0, out[n:], false
	}
	t.Fatalf("reply magic %x", out[:4])
	return 0, false, nil, false
}

// handshakePrefix is a client's handshake up to the transmission phase
// in mode.
func handshakePrefix(name string, mode protocol.Mode) []byte {
	b := clientFlagsBytes(protocol.ClientFixedNewstyle | protocol.ClientNoZeroes)
	if mode == protocol.ModeExtended {
		b = append(b, optionBytes(protocol.OptExtendedHeaders, nil)...)
	}
	if mode == protocol.ModeStructured {
		b = append(b, optionBytes(protocol.OptStructuredReply, nil)...)
	}
	if mode >= protocol.ModeStructured {
		b = append(b, optionBytes(protocol.OptSetMetaContext, protocol.AppendMetaContextRequest(nil,
			protocol.MetaContextRequest{Name: name, Queries: []string{protocol.MetaContextBaseAllocation}}))...)
	}
	return append(b, optionBytes(protocol.OptGo, protocol.AppendExportRequest(nil,
		protocol.ExportRequest{Name: name, Infos: []protocol.Info{protocol.InfoBlockSize}}))...)
}

// requestBytes is req in mode's form, and its payload.
func requestBytes(mode protocol.Mode, req protocol.ExtendedRequest, payload []byte) []byte {
	hdr := make([]byte, mode.RequestSize(), mode.RequestSize()+len(payload))
	mode.PutRequest(hdr, req)
	return append(hdr, payload...)
}

// requestSeeds are request streams such as qemu and the kernel send,
// plus the bad input the unit tests cover, in mode's form: with extended
// headers a WRITE carries NBD_CMD_FLAG_PAYLOAD_LEN, and there are seeds
// of 64-bit lengths and of payloads where none is due.
func requestSeeds(mode protocol.Mode) [][]byte {
	r := func(typ protocol.Cmd, flags protocol.CmdFlag, cookie, off uint64, n uint32) []byte {
		var payload []byte
		if typ == protocol.CmdWrite {
			payload = bytes.Repeat([]byte{0xa5}, int(n))
			if mode == protocol.ModeExtended {
				flags |= protocol.CmdFlagPayloadLen
			}
		}
		return requestBytes(mode, protocol.ExtendedRequest{Type: typ, Flags: flags, Cookie: cookie, Offset: off, Length: uint64(n)}, payload)
	}
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	disc := r(protocol.CmdDisc, 0, 0, 0, 0)
	seeds := [][]byte{
		// qemu-img map: block status over the export, then a read.
		join(r(protocol.CmdBlockStatus, 0, 1, 0, fuzzExportSize), r(protocol.CmdRead, 0, 2, 0, 65536), disc),
		// The kernel: pipelined writes with FUA, a flush, trims and zeroes.
		join(r(protocol.CmdWrite, 0, 1, 0, 4096), r(protocol.CmdWrite, protocol.CmdFlagFUA, 2, 8192, 512),
			r(protocol.CmdFlush, 0, 3, 0, 0), r(protocol.CmdTrim, 0, 4, 65536, 65536),
			r(protocol.CmdWriteZeroes, protocol.CmdFlagNoHole, 5, 0, 100), r(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero, 6, 0, 100),
			r(protocol.CmdCache, 0, 7, 0, 4096), r(protocol.CmdRead, protocol.CmdFlagDF, 8, 1, 70000),
			r(protocol.CmdBlockStatus, protocol.CmdFlagReqOne, 9, 4096, 4096), disc),
		// Bad input: past the end, too long, unknown command and flags.
		join(r(protocol.CmdRead, 0, 1, fuzzExportSize, 1), r(protocol.CmdWrite, 0, 2, fuzzExportSize-1, 2),
			r(protocol.CmdRead, 0, 3, 0, fuzzMaxRequest+1), r(99, 0, 4, 0, 0), r(protocol.CmdRead, 1<<9, 5, 0, 1), disc),
		// A write longer than the maximum: closed without reading it.
		r(protocol.CmdWrite, 0, 1, 0, fuzzMaxRequest+1)[:mode.RequestSize()],
		// Bad magic, and a truncated header.
		append([]byte("\xde\xad\xbe\xef"), r(protocol.CmdRead, 0, 1, 0, 1)[4:]...),
		r(protocol.CmdRead, 0, 1, 0, 1)[:20],
	}
	if mode != protocol.ModeExtended {
		return seeds
	}
	x := func(typ protocol.Cmd, flags protocol.CmdFlag, cookie, off, n uint64, payload []byte) []byte {
		return requestBytes(mode, protocol.ExtendedRequest{Type: typ, Flags: flags, Cookie: cookie, Offset: off, Length: n}, payload)
	}
	pl := protocol.CmdFlagPayloadLen
	return append(seeds,
		// 64-bit effect lengths, past the end and within it.
		join(x(protocol.CmdTrim, 0, 1, 0, 1<<40, nil), x(protocol.CmdBlockStatus, 0, 2, 0, 1<<40, nil),
			x(protocol.CmdWriteZeroes, 0, 3, 0, fuzzExportSize, nil), x(protocol.CmdCache, 0, 4, 4096, 1<<63, nil),
			x(protocol.CmdRead, 0, 5, 0, 1<<33, nil), disc),
		// Payloads where none is due, a WRITE without the flag (as qemu 10
		// sends it), a compact header.
		join(x(protocol.CmdFlush, pl, 1, 0, 8, []byte("payload!")), x(protocol.CmdWrite, 0, 2, 0, 4, []byte("abcd")),
			x(protocol.CmdBlockStatus, pl, 3, 0, 12, protocol.AppendBlockStatusPayload(nil, protocol.BlockStatusPayload{EffectLength: 4096, ContextIDs: []uint32{1}})),
			x(99, pl, 4, 0, 3, []byte("abc")), disc),
		join(x(protocol.CmdFlush, pl, 1, 0, 1<<40, nil)),
		join(x(protocol.CmdFlush, 0, 1, 0, 0, nil), requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdFlush, Cookie: 2}, nil)),
	)
}

// handshakeSeeds are hand-built handshakes covering every option; the
// recorded ones are in testdata.
func handshakeSeeds() [][]byte {
	flags := clientFlagsBytes(protocol.ClientFixedNewstyle | protocol.ClientNoZeroes)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	goReq := func(name string, infos ...protocol.Info) []byte {
		return protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: name, Infos: infos})
	}
	meta := func(name string, q ...string) []byte {
		return protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: name, Queries: q})
	}
	read := requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdRead, Length: 512}, nil)
	disc := requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdDisc}, nil)
	long := make([]byte, 4)
	binary.BigEndian.PutUint32(long, 1<<30)
	return [][]byte{
		{},
		flags,
		join(flags, optionBytes(protocol.OptExportName, []byte("a")), read, disc),
		join(clientFlagsBytes(protocol.ClientFixedNewstyle), optionBytes(protocol.OptExportName, nil), read, disc),
		join(flags, optionBytes(protocol.OptList, nil), optionBytes(protocol.OptAbort, nil)),
		join(flags, optionBytes(protocol.OptInfo, goReq("a", protocol.InfoName, protocol.InfoDescription, protocol.InfoBlockSize, 99)),
			optionBytes(protocol.OptGo, goReq("missing")), optionBytes(protocol.OptGo, goReq("", protocol.InfoName)), read, disc),
		join(flags, optionBytes(protocol.OptListMetaContext, meta("a")), optionBytes(protocol.OptListMetaContext, meta("a", "base:")),
			optionBytes(protocol.OptSetMetaContext, meta("a", "base:allocation")), optionBytes(protocol.OptStructuredReply, nil),
			optionBytes(protocol.OptSetMetaContext, meta("a", "base:allocation", "qemu:dirty-bitmap:x")),
			optionBytes(protocol.OptGo, goReq("a")),
			requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdBlockStatus, Length: 4096}, nil), disc),
		join(flags, optionBytes(protocol.OptStartTLS, nil), optionBytes(protocol.OptExtendedHeaders, nil),
			optionBytes(12345, []byte("junk")), optionBytes(protocol.OptGo, goReq("ro")), disc),
		join(flags, optionBytes(protocol.OptGo, make([]byte, protocol.MaxOptionLen+1)), optionBytes(protocol.OptGo, goReq("bare"))),
		join(flags, optionBytes(protocol.OptGo, long)),
		join(flags, optionBytes(protocol.OptExtendedHeaders, nil), optionBytes(protocol.OptStructuredReply, nil),
			optionBytes(protocol.OptExtendedHeaders, nil), optionBytes(protocol.OptGo, goReq("a")),
			requestBytes(protocol.ModeExtended, protocol.ExtendedRequest{Type: protocol.CmdRead, Length: 512}, nil),
			requestBytes(protocol.ModeExtended, protocol.ExtendedRequest{Type: protocol.CmdDisc}, nil)),
		join(flags, optionBytes(protocol.OptExtendedHeaders, nil), optionBytes(protocol.OptExportName, []byte("a")), read, disc),
		join(flags, []byte("IHAVEOPT\x00\x00\x00\x07\x40\x00\x00\x00")), // GO of 1 GiB: closed unread
	}
}

// recordingListener records what each client sends, one file per
// connection, in the go test fuzz corpus format.
type recordingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*recordingConn
}

type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (l *recordingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &recordingConn{Conn: nc}
	l.mu.Lock()
	l.conns = append(l.conns, rc)
	l.mu.Unlock()
	return rc, nil
}

// maxCorpusFile keeps recorded transcripts small enough to fuzz quickly.
const maxCorpusFile = 256 << 10

// TestRecordCorpus records real clients' handshakes and first requests
// into testdata/fuzz/FuzzHandshake. It is a generator, not a check: it
// runs only with NBDD_RECORD_CORPUS=1 and needs nbdinfo, qemu-img and
// nbdsh (libnbd-bin, qemu-utils, python3-libnbd).
func TestRecordCorpus(t *testing.T) {
	if os.Getenv("NBDD_RECORD_CORPUS") == "" {
		t.Skip("set NBDD_RECORD_CORPUS=1 to record real clients into testdata/fuzz/FuzzHandshake")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandshake")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	cmds := []struct {
		name string
		args []string
	}{
		{"nbdinfo-list", []string{"nbdinfo", "--list", "nbd+unix:///?socket=" + sock}},
		{"nbdinfo-json", []string{"nbdinfo", "--json", "nbd+unix:///a?socket=" + sock}},
		{"nbdinfo-map", []string{"nbdinfo", "--map", "nbd+unix:///a?socket=" + sock}},
		{"nbdinfo-content", []string{"nbdinfo", "--content", "nbd+unix:///a?socket=" + sock}},
		{"qemu-img-info", []string{"qemu-img", "info", "nbd+unix:///a?socket=" + sock}},
		{"qemu-img-map", []string{"qemu-img", "map", "--output=json", "nbd+unix:///a?socket=" + sock}},
		{"qemu-io-write", []string{"qemu-io", "-f", "raw", "-c", "write -P 0x55 1000 3000", "-c", "read -P 0x55 1000 3000",
			"-c", "flush", "-c", "discard 65536 65536", "-c", "write -z 0 512", "nbd+unix:///a?socket=" + sock}},
		{"nbdsh-ops", []string{"nbdsh", "--base-allocation", "-u", "nbd+unix:///a?socket=" + sock, "-c",
			"h.pwrite(b'x'*4096, 8192, nbd.CMD_FLAG_FUA); h.pread(4096, 8192); h.flush(); h.trim(4096, 0); h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO); h.cache(4096, 0); h.block_status(65536, 0, lambda *a: 0)"}},
	}
	for _, cmd := range cmds {
		if _, err := exec.LookPath(cmd.args[0]); err != nil {
			t.Fatalf("%s not installed: %v", cmd.args[0], err)
		}
		srv := &Server{Exports: []Export{
			{Name: "a", Description: "recorded", Backend: backend.NewMemory(fuzzExportSize)},
			{Name: "b", Backend: backend.NewMemory(4096)},
		}, Logger: slog.New(slog.DiscardHandler)}
		os.Remove(sock)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		rl := &recordingListener{Listener: l}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(rl) }()
		c := exec.Command(cmd.args[0], cmd.args[1:]...)
		c.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH")) // nbdsh needs Debian's python3
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd.name, err, out)
		}
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		<-served
		rl.mu.Lock()
		for i, rc := range rl.conns {
			b := rc.buf.Bytes()
			if len(b) > maxCorpusFile {
				b = b[:maxCorpusFile]
			}
			name := filepath.Join(dir, fmt.Sprintf("%s-%d", cmd.name, i))
			if err := os.WriteFile(name, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d bytes", name, len(b))
		}
		rl.mu.Unlock()
	}
}

// TestTranscriptSeeds runs every seed once in the ordinary test run, so a
// regression in a seed shows up without -fuzz. The request streams are
// also delivered one byte and half a buffer at a time: however the
// client's bytes are cut, every request gets its one reply.
func TestTranscriptSeeds(t *testing.T) {
	for i, s := range handshakeSeeds() {
		t.Run(fmt.Sprint("handshake", i), func(t *testing.T) { serveTranscript(t, s) })
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":   func(r io.Reader) io.Reader { return r },
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
	}
	for _, mode := range fuzzModes {
		for i, s := range requestSeeds(mode) {
			for name, wrap := range readers {
				t.Run(fmt.Sprint("requests", i, mode, name), func(t *testing.T) {
					requests, sent := renumber(s, mode)
					data := append(handshakePrefix("a", mode), requests...)
					checkReplies(t, serveTranscriptFrom(t, data, wrap(bytes.NewReader(data))), sent, mode)
				})
			}
		}
	}
}
