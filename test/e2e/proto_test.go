package e2e

// Block status against SEEK_DATA/SEEK_HOLE
// and the memory chunk map, bytes on the wire with and without structured
// replies, nbdsh protocol checks, and a differential run against nbdkit
// memory and qemu-nbd. Helpers of this file carry the prefix p5.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// p5span is the byte range [off, end).
type p5span struct{ off, end int64 }

func (s p5span) String() string { return fmt.Sprintf("[%d, %d)", s.off, s.end) }

// p5merge sorts spans and merges those that overlap or touch.
func p5merge(spans []p5span) []p5span {
	s := slices.Clone(spans)
	slices.SortFunc(s, func(a, b p5span) int { return int(a.off - b.off) })
	var out []p5span
	for _, x := range s {
		if x.end <= x.off {
			continue
		}
		if k := len(out); k > 0 && x.off <= out[k-1].end {
			out[k-1].end = max(out[k-1].end, x.end)
			continue
		}
		out = append(out, x)
	}
	return out
}

// p5subtract removes cut from the merged spans.
func p5subtract(spans []p5span, cut p5span) []p5span {
	var out []p5span
	for _, s := range spans {
		if s.end <= cut.off || s.off >= cut.end {
			out = append(out, s)
			continue
		}
		if s.off < cut.off {
			out = append(out, p5span{s.off, cut.off})
		}
		if s.end > cut.end {
			out = append(out, p5span{cut.end, s.end})
		}
	}
	return out
}

// p5covered reports whether s lies inside the union of the merged spans.
func p5covered(spans []p5span, s p5span) bool {
	for _, x := range spans {
		if x.off <= s.off && s.end <= x.end {
			return true
		}
	}
	return false
}

// p5extent is one extent of a base:allocation map (flags: 1 HOLE, 2 ZERO).
type p5extent struct {
	off, n int64
	flags  uint32
}

// p5checkTiling fails the test unless the extents cover [0, size) in
// order without gaps or overlaps.
func p5checkTiling(t *testing.T, who string, exts []p5extent, size int64) {
	t.Helper()
	pos := int64(0)
	for _, e := range exts {
		if e.off != pos || e.n <= 0 {
			t.Fatalf("%s: extent at %d length %d; want one starting at %d (extents %v)", who, e.off, e.n, pos, exts)
		}
		pos += e.n
	}
	if pos < size {
		t.Fatalf("%s: extents end at %d; want them to cover the export (%d bytes)", who, pos, size)
	}
}

// p5dataSpans returns the merged ranges of the extents without HOLE.
func p5dataSpans(exts []p5extent) []p5span {
	var s []p5span
	for _, e := range exts {
		if e.flags&1 == 0 {
			s = append(s, p5span{e.off, e.off + e.n})
		}
	}
	return p5merge(s)
}

// p5nbdinfoMap runs nbdinfo --map --json on uri.
func p5nbdinfoMap(t *testing.T, uri string) []p5extent {
	t.Helper()
	requireTool(t, "nbdinfo")
	out := command{name: "nbdinfo", args: []string{"--map", "--json", uri}}.run(t)
	var m []struct {
		Offset int64  `json:"offset"`
		Length int64  `json:"length"`
		Type   uint32 `json:"type"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json %s: %v\n%s", uri, err, out)
	}
	exts := make([]p5extent, len(m))
	for i, e := range m {
		exts[i] = p5extent{e.Offset, e.Length, e.Type}
	}
	return exts
}

// p5qemuMap runs qemu-img map --output=json on uri; data=false becomes
// HOLE and zero=true ZERO.
func p5qemuMap(t *testing.T, uri string) []p5extent {
	t.Helper()
	requireTool(t, "qemu-img")
	out := command{name: "qemu-img", args: []string{"map", "--output=json", "-f", "raw", uri}}.run(t)
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map --output=json %s: %v\n%s", uri, err, out)
	}
	exts := make([]p5extent, len(m))
	for i, e := range m {
		var f uint32
		if !e.Data {
			f |= 1
		}
		if e.Zero {
			f |= 2
		}
		exts[i] = p5extent{e.Start, e.Length, f}
	}
	return exts
}

// p5seekData maps the data of the file at path with SEEK_DATA and
// SEEK_HOLE, as nbdd's file backend must.
func p5seekData(t *testing.T, path string) []p5span {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	var spans []p5span
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA %s at %d: %v", path, off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE %s at %d: %v", path, data, err)
		}
		spans = append(spans, p5span{data, hole})
		off = hole
	}
	return spans
}

// p5nbdsh runs a Python script under nbdsh (its own handles, no -u) with
// env as extra environment, and fails the test unless it exits 0 and
// prints an OK line.
func p5nbdsh(t *testing.T, script string, env ...string) string {
	t.Helper()
	requireTool(t, "nbdsh")
	out := command{name: "nbdsh", env: pythonEnv(env...), args: []string{"-c", script}}.run(t)
	if !regexp.MustCompile(`(?m)^OK\b`).MatchString(out) {
		t.Fatalf("nbdsh: no OK line in its output:\n%s", out)
	}
	return out
}

// p5writeScript writes b"\x5a" over each range of WRITES, then trims each
// range of TRIMS ("off:len,off:len"), and flushes.
const p5writeScript = `
import os
c = nbd.NBD()
c.connect_uri(os.environ["URI"])
def spans(name):
    v = os.environ.get(name, "")
    return [tuple(int(x) for x in s.split(":")) for s in v.split(",") if s]
for off, n in spans("WRITES"):
    c.pwrite(b"\x5a" * n, off)
for off, n in spans("TRIMS"):
    c.trim(n, off)
c.flush()
c.shutdown()
print("OK")
`

func p5spanEnv(name string, spans []p5span) string {
	var parts []string
	for _, s := range spans {
		parts = append(parts, fmt.Sprintf("%d:%d", s.off, s.end-s.off))
	}
	return name + "=" + strings.Join(parts, ",")
}

// TestBlockStatusMap checks that nbdinfo --map and qemu-img map report, for
// a sparse file export, the data ranges SEEK_DATA/SEEK_HOLE find in the
// file, and for a memory export the written ranges rounded out to its
// 64 KiB chunks (less the chunks a TRIM covered entirely); everything else
// is HOLE|ZERO.
func TestBlockStatusMap(t *testing.T) {
	requireTool(t, "nbdinfo")
	requireTool(t, "qemu-img")
	requireTool(t, "nbdsh")
	const size = 32 << 20
	writes := []p5span{
		{0, 4096},
		{1<<20 + 8192, 1<<20 + 8192 + 20000}, // ends inside a block
		{5 << 20, 7 << 20},
		{12<<20 + 100, 12<<20 + 300}, // inside one block, unaligned
		{31 << 20, 32 << 20},         // up to the end
	}

	dir := t.TempDir()
	img := filepath.Join(dir, "sparse.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, w := range writes {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, int(w.end-w.off)), w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	seek := p5seekData(t, img)
	for _, w := range writes {
		if !p5covered(seek, w) {
			t.Fatalf("SEEK_DATA/SEEK_HOLE map %v does not cover the write %v", seek, w)
		}
	}
	t.Logf("file: SEEK_DATA/SEEK_HOLE data %v", seek)

	// Memory: the same writes, then 8-10 MiB written and most of its first
	// MiB trimmed. Chunks wholly inside the trim become holes again; the
	// partial chunk at its end stays allocated (zeroed).
	memWrites := append(slices.Clone(writes), p5span{8 << 20, 10 << 20})
	trims := []p5span{{8<<20 + 64<<10, 9<<20 + 100}}
	chunk := int64(64 << 10)
	alloc := make([]bool, size/chunk)
	for _, w := range memWrites {
		for c := w.off / chunk; c*chunk < w.end; c++ {
			alloc[c] = true
		}
	}
	for _, tr := range trims {
		for c := (tr.off + chunk - 1) / chunk; (c+1)*chunk <= tr.end; c++ {
			alloc[c] = false
		}
	}
	var memWant []p5span
	for c, a := range alloc {
		if a {
			memWant = append(memWant, p5span{int64(c) * chunk, int64(c+1) * chunk})
		}
	}
	memWant = p5merge(memWant)
	t.Logf("memory: written %v, trimmed %v: expected data %v", memWrites, trims, memWant)

	s := startNBDD(t, "--export", "file="+img, "--memory", fmt.Sprintf("mem=%d", size))
	p5nbdsh(t, p5writeScript, "URI="+s.unixURI(t, "mem"), p5spanEnv("WRITES", memWrites), p5spanEnv("TRIMS", trims))

	for _, tc := range []struct {
		export string
		want   []p5span
	}{{"file", seek}, {"mem", memWant}} {
		uri := s.unixURI(t, tc.export)
		for _, tool := range []struct {
			name string
			run  func(*testing.T, string) []p5extent
		}{{"nbdinfo --map", p5nbdinfoMap}, {"qemu-img map", p5qemuMap}} {
			exts := tool.run(t, uri)
			who := tool.name + " " + tc.export
			p5checkTiling(t, who, exts, size)
			if got := p5dataSpans(exts); !slices.Equal(got, tc.want) {
				t.Errorf("%s: data %v; want %v", who, got, tc.want)
			}
			for _, e := range exts {
				if e.flags&1 != 0 && e.flags&2 == 0 {
					t.Errorf("%s: hole at %d length %d without ZERO; nbdd's holes read as zeroes", who, e.off, e.n)
				}
			}
			t.Logf("%s: %d extents, data %v", who, len(exts), p5dataSpans(exts))
		}
	}
}

// p5proxy forwards unix-socket connections to target and counts the bytes
// in each direction.
type p5proxy struct {
	sock, target string
	ln           net.Listener
	down, up     atomic.Int64 // server→client, client→server
	mu           sync.Mutex
	conns        []net.Conn
	wg           sync.WaitGroup
}

func p5startProxy(t *testing.T, target string) *p5proxy {
	t.Helper()
	dir, err := os.MkdirTemp(shortTempDir(), "p5proxy")
	if err != nil {
		t.Fatal(err)
	}
	p := &p5proxy{sock: filepath.Join(dir, "p"), target: target}
	if p.ln, err = net.Listen("unix", p.sock); err != nil {
		t.Fatal(err)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go p.pipe(c)
		}
	}()
	t.Cleanup(func() {
		p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
		os.RemoveAll(dir)
	})
	return p
}

func (p *p5proxy) pipe(c net.Conn) {
	defer p.wg.Done()
	s, err := net.Dial("unix", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, s)
	p.mu.Unlock()
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		buf := make([]byte, 1<<20)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				n.Add(int64(k))
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.(*net.UnixConn).CloseWrite()
	}
	wg.Add(2)
	go cp(s, c, &p.up)
	go cp(c, s, &p.down)
	wg.Wait()
	c.Close()
	s.Close()
}

// p5wire is one measured transfer through a p5proxy.
type p5wire struct {
	down, up int64
	d        time.Duration
}

func (p *p5proxy) measure(f func()) p5wire {
	down, up := p.down.Load(), p.up.Load()
	d := timed(f)
	return p5wire{p.down.Load() - down, p.up.Load() - up, d}
}

// p5readAllScript reads the whole export in 2 MiB preads with structured
// replies requested or not (SR=1/0) and prints the SHA-256 of the bytes.
const p5readAllScript = `
import os, hashlib
sr = os.environ["SR"] == "1"
c = nbd.NBD()
c.set_request_structured_replies(sr)
c.connect_uri(os.environ["URI"])
assert c.get_structured_replies_negotiated() == sr
size = c.get_size()
step = 2 << 20
sha = hashlib.sha256()
for off in range(0, size, step):
    sha.update(c.pread(min(step, size - off), off))
c.shutdown()
print("SHA256", sha.hexdigest())
print("OK")
`

// TestSparseCopyWire copies a 1 GiB file export that is 90% holes out of
// nbdd through a counting proxy, and compares the bytes on the wire:
// structured replies let nbdd answer holes with OFFSET_HOLE chunks, so
// nbdcopy --no-extents (which reads every byte and never asks for block
// status) moves about the data only, while simple replies
// (set_request_structured_replies(False)) carry every zero.
func TestSparseCopyWire(t *testing.T) {
	requireTool(t, "nbdcopy")
	requireTool(t, "nbdsh")
	const (
		size   = 1 << 30
		stride = 10 << 20 // one MiB of data every 10 MiB: ~10% data
		piece  = 1 << 20
	)
	img := filepath.Join(t.TempDir(), "sparse1g.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, piece)
	rand.NewChaCha8([32]byte{5}).Read(buf)
	var dataBytes int64
	for off := int64(0); off < size; off += stride {
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		dataBytes += piece
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(f, 0, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wantSHA := hex.EncodeToString(sum.Sum(nil))

	s := startNBDD(t, "--export", "img="+img+",ro")
	p := p5startProxy(t, s.sock)
	uri := "nbd+unix:///img?socket=" + p.sock

	noExtents := p.measure(func() { command{name: "nbdcopy", args: []string{"--no-extents", uri, "null:"}}.run(t) })
	extents := p.measure(func() { command{name: "nbdcopy", args: []string{uri, "null:"}}.run(t) })
	var shaSR, shaSimple string
	sr := p.measure(func() { shaSR = p5sha(t, p5nbdsh(t, p5readAllScript, "URI="+uri, "SR=1")) })
	simple := p.measure(func() { shaSimple = p5sha(t, p5nbdsh(t, p5readAllScript, "URI="+uri, "SR=0")) })
	if shaSR != wantSHA || shaSimple != wantSHA {
		t.Errorf("SHA-256 of the export read with structured replies %s, with simple replies %s; the file's is %s", shaSR, shaSimple, wantSHA)
	}

	t.Logf("1 GiB file export, %d MiB data (%.0f%%), rest holes; bytes server→client (client→server) through a unix-socket proxy:", dataBytes>>20, 100*float64(dataBytes)/size)
	for _, m := range []struct {
		name string
		w    p5wire
	}{
		{"nbdcopy --no-extents, structured replies (OFFSET_HOLE)", noExtents},
		{"nbdcopy (block status skips holes), structured replies", extents},
		{"nbdsh 2 MiB preads, structured replies", sr},
		{"nbdsh 2 MiB preads, simple replies", simple},
	} {
		t.Logf("| %-56s | %11d bytes (%4.0f MiB) | %8d up | %6.2f s |", m.name, m.w.down, float64(m.w.down)/(1<<20), m.w.up, m.w.d.Seconds())
	}
	t.Logf("simple replies / structured (nbdcopy --no-extents): %.1fx the bytes", float64(simple.down)/float64(noExtents.down))

	if simple.down < size {
		t.Errorf("simple replies moved %d bytes; a full read of %d bytes cannot move fewer", simple.down, int64(size))
	}
	if noExtents.down > 2*dataBytes || noExtents.down*4 > simple.down {
		t.Errorf("nbdcopy --no-extents with structured replies moved %d bytes (%d of data); want about the data and far fewer than simple replies' %d",
			noExtents.down, dataBytes, simple.down)
	}
	if sr.down > 2*dataBytes {
		t.Errorf("nbdsh 2 MiB preads with structured replies moved %d bytes; want about the %d bytes of data", sr.down, dataBytes)
	}
}

var p5shaRE = regexp.MustCompile(`(?m)^SHA256 ([0-9a-f]{64})$`)

func p5sha(t *testing.T, out string) string {
	t.Helper()
	m := p5shaRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no SHA256 line in:\n%s", out)
	}
	return m[1]
}

// p5checksScript: LIST_META_CONTEXT with base: and with unknown contexts,
// SET with an unknown context, BLOCK_STATUS with REQ_ONE, DF reads and
// FAST_ZERO (KIND: memory must succeed, file may answer ENOTSUP, enotsup
// must answer ENOTSUP; ENOTSUP must leave the data and the connection
// intact).
const p5checksScript = `
import os
uri = os.environ["URI"]
kind = os.environ["KIND"]

o = nbd.NBD()
o.set_opt_mode(True)
o.connect_uri(uri)
def listed(queries):
    o.clear_meta_contexts()
    for q in queries:
        o.add_meta_context(q)
    got = []
    n = o.opt_list_meta_context(lambda name: got.append(name))
    assert n == len(got), (n, got)
    return got
got = listed(["base:"])
print("LIST [base:] ->", got)
assert got == ["base:allocation"], got
got = listed(["nosuch:thing", "qemu:dirty-bitmap:x"])
print("LIST [nosuch:thing, qemu:dirty-bitmap:x] ->", got)
assert got == [], got
got = listed(["nosuch:thing", "base:allocation"])
print("LIST [nosuch:thing, base:allocation] ->", got)
assert got == ["base:allocation"], got
got = listed([])
print("LIST [] ->", got)
assert "base:allocation" in got, got
o.clear_meta_contexts()
o.add_meta_context("nosuch:thing")
o.add_meta_context("base:allocation")
o.opt_go()
assert o.can_meta_context("base:allocation")
assert not o.can_meta_context("nosuch:thing")
print("SET [nosuch:thing, base:allocation] -> base:allocation only")
o.shutdown()

h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
DATA_OFF, DATA_LEN = 1 << 20, 3 * 4096
h.pwrite(b"\xa5" * DATA_LEN, DATA_OFF)
h.flush()

def status(count, off, flags=0):
    out = []
    def cb(meta, offset, entries, err):
        assert meta == "base:allocation", meta
        assert offset == off, (offset, off)
        out.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(count, off, cb, flags)
    return out
req = 8 << 20
full = status(req, 0)
one = status(req, 0, nbd.CMD_FLAG_REQ_ONE)
print("BLOCK_STATUS 8M at 0:", full[:4], "with REQ_ONE:", one)
assert len(full) >= 2, full
assert len(one) == 1, one
assert 0 < one[0][0] <= DATA_OFF and one[0][1] == 3, one
one = status(4096, DATA_OFF, nbd.CMD_FLAG_REQ_ONE)
print("BLOCK_STATUS 4K at the data with REQ_ONE:", one)
assert len(one) == 1 and one[0][1] & 1 == 0 and 0 < one[0][0] <= 4096, one

assert h.can_df()
def chunks(count, off, flags=0):
    got = []
    buf = bytearray(count)
    def cb(sub, offset, st, err):
        got.append((st, offset, len(sub)))
        buf[offset - off:offset - off + len(sub)] = sub
        return 0
    h.pread_structured(count, off, cb, flags)
    return got, bytes(buf)
off, n = DATA_OFF - 32768, 65536
want = b"\0" * 32768 + b"\xa5" * DATA_LEN + b"\0" * (32768 - DATA_LEN)
dfc, df = chunks(n, off, nbd.CMD_FLAG_DF)
sc, sparse = chunks(n, off)
print("READ 64K with DF: chunks", dfc, "; without DF:", sc, "(1 data, 2 hole)")
assert df == sparse == want == h.pread(n, off)
assert dfc == [(nbd.READ_DATA, off, n)], dfc
assert len(sc) > 1 and any(c[0] == nbd.READ_HOLE for c in sc), sc

assert h.can_fast_zero()
ZOFF, ZLEN = 4 << 20, 256 << 10
h.pwrite(b"\x5a" * ZLEN, ZOFF)
try:
    h.zero(ZLEN, ZOFF, nbd.CMD_FLAG_FAST_ZERO)
    assert kind != "enotsup", "FAST_ZERO succeeded; want ENOTSUP"
    assert h.pread(ZLEN, ZOFF) == b"\0" * ZLEN
    print("FAST_ZERO", kind, ": ok, zeroed")
except nbd.Error as e:
    print("FAST_ZERO", kind, ":", e)
    assert kind != "memory", "memory export refused FAST_ZERO: %s" % e
    assert e.errno == "ENOTSUP", e.errno
    assert h.pread(ZLEN, ZOFF) == b"\x5a" * ZLEN, "data changed by a failed FAST_ZERO"
    if kind == "file":
        h.zero(ZLEN, ZOFF)
        assert h.pread(ZLEN, ZOFF) == b"\0" * ZLEN
    h.pwrite(b"\x11" * 4096, ZOFF)
    assert h.pread(4096, ZOFF) == b"\x11" * 4096
    print("after ENOTSUP: data intact, the connection goes on")
h.shutdown()
print("OK")
`

// p5errorChunkScript reads the faulty first 4 KiB and expects EIO with the
// server's message in an ERROR chunk. libnbd 1.14 does not put that
// message into nbd.Error; it reports it through the debug callback
// ("structured error server message: ..."), so that is where the client
// sees it.
const p5errorChunkScript = `
import os
msgs = []
c = nbd.NBD()
c.set_debug(True)
c.set_debug_callback(lambda ctx, msg: msgs.append(msg))
c.connect_uri(os.environ["URI"])
try:
    c.pread(4096, 0)
    raise AssertionError("read of a faulty range succeeded")
except nbd.Error as e:
    print("nbd.Error:", str(e), e.errno)
    assert e.errno == "EIO", e.errno
    err = str(e)
server = [m for m in msgs if "server message" in m]
print("server messages:", server)
assert any("injected read fault at offset 0" in m for m in server), msgs[-20:]
print("MESSAGE_IN_ERROR", "injected read fault" in err)
assert c.pread(4096, 4096) == b"\0" * 4096
c.shutdown()
print("OK")
`

// TestNBDShProtocolChecks runs the nbdsh protocol checks against a memory
// export, a file export, and a file export whose zeroing fails with
// ENOTSUP (injected), then checks that an ERROR chunk's message reaches
// the client.
func TestNBDShProtocolChecks(t *testing.T) {
	requireTool(t, "nbdsh")
	img := filepath.Join(t.TempDir(), "file.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	s := startNBDD(t, "--memory", "mem=16M", "--export", "file="+img)
	t.Run("memory", func(t *testing.T) {
		t.Log(p5nbdsh(t, p5checksScript, "URI="+s.unixURI(t, "mem"), "KIND=memory"))
	})
	t.Run("file", func(t *testing.T) {
		t.Log(p5nbdsh(t, p5checksScript, "URI="+s.unixURI(t, "file"), "KIND=file"))
	})
	t.Run("file-enotsup", func(t *testing.T) {
		img2 := filepath.Join(t.TempDir(), "file2.img")
		if err := os.WriteFile(img2, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img2, 16<<20); err != nil {
			t.Fatal(err)
		}
		s := startNBDD(t, "--export", "file="+img2, "--fault", "zero:4M-5M:enotsup")
		t.Log(p5nbdsh(t, p5checksScript, "URI="+s.unixURI(t, "file"), "KIND=enotsup"))
	})
	t.Run("error-chunk-message", func(t *testing.T) {
		s := startNBDD(t, "--memory", "mem=16M", "--fault", "read:0-4096:eio")
		out := p5nbdsh(t, p5errorChunkScript, "URI="+s.unixURI(t, "mem"))
		t.Log(out)
		if strings.Contains(out, "MESSAGE_IN_ERROR False") {
			t.Logf("note: libnbd %s keeps the server's error message out of nbd.Error; it is visible through the debug callback only", p5libnbdVersion(t))
		}
	})
}

func p5libnbdVersion(t *testing.T) string {
	out, _ := command{name: "nbdinfo", args: []string{"--version"}}.try(t)
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "libnbd ") {
			return strings.TrimPrefix(l, "libnbd ")
		}
	}
	return "?"
}

// p5op is one operation of the differential script.
type p5op struct {
	Op   string `json:"op"` // write, zero, trim, flush
	Off  int64  `json:"off"`
	Len  int64  `json:"len"`
	Data string `json:"data,omitempty"` // a file holding the write's bytes
}

// p5diffScript applies OPS over structured replies with base:allocation,
// then dumps the export to DUMP and its block status map to EXTENTS.
const p5diffScript = `
import os, json
c = nbd.NBD()
c.add_meta_context("base:allocation")
c.connect_uri(os.environ["URI"])
assert c.get_structured_replies_negotiated()
assert c.can_meta_context("base:allocation")
ops = json.load(open(os.environ["OPS"]))
for op in ops:
    if op["op"] == "write":
        data = open(op["data"], "rb").read()
        assert len(data) == op["len"]
        c.pwrite(data, op["off"])
        assert c.pread(op["len"], op["off"]) == data
    elif op["op"] == "zero":
        c.zero(op["len"], op["off"])
        assert c.pread(op["len"], op["off"]) == b"\0" * op["len"]
    elif op["op"] == "trim":
        c.trim(op["len"], op["off"])
    elif op["op"] == "flush":
        c.flush()
size = c.get_size()
with open(os.environ["DUMP"], "wb") as f:
    step = 4 << 20
    for off in range(0, size, step):
        f.write(c.pread(min(step, size - off), off))
exts = []
off = 0
while off < size:
    got = []
    def cb(meta, offset, entries, err):
        if meta == "base:allocation":
            got.extend(zip(entries[0::2], entries[1::2]))
        return 0
    c.block_status(size - off, off, cb)
    assert got, "empty block status reply at %d" % off
    for n, flags in got:
        n = min(n, size - off)
        if n <= 0:
            break
        exts.append([off, n, flags])
        off += n
json.dump(exts, open(os.environ["EXTENTS"], "w"))
c.shutdown()
print("OK")
`

// p5startQEMUNBD serves the raw file at path with qemu-nbd on a unix
// socket (persistent, discard=unmap) and returns its URI. qemu-nbd --fork
// returns once the socket listens; Cleanup sends SIGTERM to the pid it
// wrote and waits for it to go.
func p5startQEMUNBD(t *testing.T, path string) string {
	t.Helper()
	requireTool(t, "qemu-nbd")
	dir, err := os.MkdirTemp(shortTempDir(), "p5qnbd")
	if err != nil {
		t.Fatal(err)
	}
	sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	t.Cleanup(func() { os.RemoveAll(dir) })
	command{name: "qemu-nbd", args: []string{"--fork", "--pid-file", pidFile, "-f", "raw", "-x", "disk",
		"-k", sock, "-t", "-e", "4", "--discard=unmap", path}}.run(t)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 1 {
		t.Fatalf("qemu-nbd pid file %q: %v", b, err)
	}
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(stopTimeout)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("qemu-nbd (pid %d) did not exit within %v of SIGTERM; killed it", pid, stopTimeout)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return "nbd+unix:///disk?socket=" + sock
}

// TestDifferentialBlockStatus runs one script of writes, zeroes, trims,
// reads and block status over structured replies against nbdd (memory and
// file exports), nbdkit memory and qemu-nbd. Every server must hold the
// same bytes as a model of the operations (trimmed ranges, whose contents
// the protocol leaves unspecified, excepted), and every map must be
// compatible with the bytes: extents without HOLE cover every written
// byte, and extents flagged ZERO read as zeroes. Allocation granularity
// differs, so the maps themselves are only logged.
func TestDifferentialBlockStatus(t *testing.T) {
	requireTool(t, "nbdsh")
	requireTool(t, "nbdkit")
	requireTool(t, "qemu-nbd")
	const size = 64 << 20
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(5, 5))
	var ops []p5op
	write := func(off, n int64) {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.UintN(255)) + 1 // never zero: every written byte is data
		}
		path := filepath.Join(dir, fmt.Sprintf("w%d", len(ops)))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		ops = append(ops, p5op{Op: "write", Off: off, Len: n, Data: path})
	}
	write(0, 1<<20)
	write(5<<20+100, 4000)
	write(10<<20, 300<<10)
	write(20<<20, 2<<20)
	write(40<<20-7, 70000)
	write(63<<20, 1<<20)
	ops = append(ops,
		p5op{Op: "zero", Off: 20<<20 + 256<<10, Len: 512 << 10},
		p5op{Op: "zero", Off: 30 << 20, Len: 128 << 10}, // never written
		p5op{Op: "zero", Off: 40<<20 + 1000, Len: 500},
		p5op{Op: "flush"},
		p5op{Op: "trim", Off: 21 << 20, Len: 1 << 20},
		p5op{Op: "trim", Off: 10<<20 + 5000, Len: 10000},
	)
	write(21<<20+512<<10, 4096) // over the trim
	write(48<<20+1, 1)
	ops = append(ops, p5op{Op: "flush"})
	opsPath := filepath.Join(dir, "ops.json")
	b, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(opsPath, b, 0o644); err != nil {
		t.Fatal(err)
	}

	// The model: expected bytes, the ranges holding written data, and the
	// trimmed ranges not written since.
	model := make([]byte, size)
	var live, unspecified []p5span
	for _, op := range ops {
		sp := p5span{op.Off, op.Off + op.Len}
		switch op.Op {
		case "write":
			data, err := os.ReadFile(op.Data)
			if err != nil {
				t.Fatal(err)
			}
			copy(model[op.Off:], data)
			live = p5merge(append(live, sp))
			unspecified = p5subtract(unspecified, sp)
		case "zero", "trim":
			clear(model[sp.off:sp.end])
			live = p5subtract(live, sp)
			unspecified = p5subtract(unspecified, sp)
			if op.Op == "trim" {
				unspecified = p5merge(append(unspecified, sp))
			}
		}
	}

	newFile := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s := startNBDD(t, "--memory", fmt.Sprintf("mem=%d", size), "--export", "file="+newFile("nbdd.img"))
	servers := []struct{ name, uri string }{
		{"nbdd memory", s.unixURI(t, "mem")},
		{"nbdd file", s.unixURI(t, "file")},
		{"nbdkit memory", startNBDKit(t, "memory", fmt.Sprint(size))},
		{"qemu-nbd file", p5startQEMUNBD(t, newFile("qemu.img"))},
	}
	for i, srv := range servers {
		t.Run(strings.ReplaceAll(srv.name, " ", "-"), func(t *testing.T) {
			dump := filepath.Join(dir, fmt.Sprintf("dump%d", i))
			extPath := filepath.Join(dir, fmt.Sprintf("extents%d.json", i))
			p5nbdsh(t, p5diffScript, "URI="+srv.uri, "OPS="+opsPath, "DUMP="+dump, "EXTENTS="+extPath)
			got, err := os.ReadFile(dump)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != size {
				t.Fatalf("dump of %d bytes; want %d", len(got), size)
			}
			// Bytes: equal to the model outside the trimmed ranges.
			pos := int64(0)
			for _, u := range append(slices.Clone(unspecified), p5span{size, size}) {
				if i := firstDiff(got[pos:u.off], model[pos:u.off]); i >= 0 {
					t.Errorf("byte %d is %#x; the model has %#x", pos+int64(i), got[pos+int64(i)], model[pos+int64(i)])
				}
				pos = u.end
			}
			for _, u := range unspecified {
				t.Logf("trimmed, not rewritten %v: reads as zeroes: %v", u, p5allZero(got[u.off:u.end]))
			}
			// Extents: compatible with the bytes.
			var raw [][3]int64
			b, err := os.ReadFile(extPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			exts := make([]p5extent, len(raw))
			for i, r := range raw {
				exts[i] = p5extent{r[0], r[1], uint32(r[2])}
			}
			p5checkTiling(t, srv.name, exts, size)
			data := p5dataSpans(exts)
			for _, l := range live {
				if !p5covered(data, l) {
					t.Errorf("written range %v is not inside the extents without HOLE %v", l, data)
				}
			}
			for _, e := range exts {
				if e.flags&2 != 0 && !p5allZero(got[e.off:e.off+e.n]) {
					t.Errorf("extent at %d length %d is flagged ZERO but does not read as zeroes", e.off, e.n)
				}
			}
			var dataBytes int64
			for _, d := range data {
				dataBytes += d.end - d.off
			}
			t.Logf("%s: %d extents, %d data ranges, %d bytes reported as data (%d written): %v", srv.name, len(exts), len(data), dataBytes, p5total(live), data)
		})
	}
}

func p5total(spans []p5span) int64 {
	var n int64
	for _, s := range spans {
		n += s.end - s.off
	}
	return n
}

// p5allZero reports whether b holds only zero bytes.
func p5allZero(b []byte) bool {
	var zero [64 << 10]byte
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// TestNoStructuredReplies: with --no-structured-replies, libnbd asks for
// structured replies and is refused, then reads and writes with simple
// replies, on a memory export and on a file export (whose READs of
// 64 KiB or more go out with sendfile).
func TestNoStructuredReplies(t *testing.T) {
	forEachStrategy(t, func(t *testing.T, strategy string) {
		img := filepath.Join(t.TempDir(), "f.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 8<<20); err != nil {
			t.Fatal(err)
		}
		s := startNBDD(t, "--strategy", strategy, "--no-structured-replies", "--memory", "mem=8M", "--export", "file="+img)
		for _, name := range []string{"mem", "file"} {
			p5nbdsh(t, noSRScript, "URI="+s.unixURI(t, name))
		}
	})
}

const noSRScript = `
import os
c = nbd.NBD()
c.connect_uri(os.environ["URI"])
assert not c.get_structured_replies_negotiated()
for off, n in ((0, 4096), (1 << 20, 256 << 10)):
    data = os.urandom(n)
    c.pwrite(data, off)
    assert c.pread(n, off) == data, (off, n)
assert c.pread(4096, 4 << 20) == bytes(4096)
c.shutdown()
print("OK")
`
