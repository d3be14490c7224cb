package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// fileExport returns a file export of size bytes in dir, whose first
// len(data) bytes are data (in the page cache, as just written) and the
// rest a hole, and the file's path. dir "/dev/shm" gives a file in memory.
func fileExport(t *testing.T, dir string, size int64, data []byte) (*backend.File, string) {
	t.Helper()
	if _, err := os.Stat(dir); err != nil {
		testenv.SkipOutsideCI(t, "no %s", dir)
	}
	tmp, err := os.CreateTemp(dir, "nbdd-server-*")
	require.NoError(t, err)
	t.Cleanup(func() { os.Remove(tmp.Name()) })
	_, err = tmp.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, tmp.Truncate(size))
	f, err := backend.NewFile(tmp, false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	if dir == "/dev/shm" {
		require.True(t, f.NonBlocking(), "/dev/shm must be tmpfs for this test")
	}
	return f, tmp.Name()
}

// TestSendfileReads: large READs of a file export whose data is in the
// page cache (a file in memory, or on disk after it was written) go from
// the file to the socket with sendfile(2), taking no buffer from the
// strategy, and arrive intact under simple and structured replies (one
// OFFSET_DATA chunk, then a NONE chunk); a READ that covers a hole takes the buffered path
// and still gets an OFFSET_HOLE chunk.
func TestSendfileReads(t *testing.T) {
	const size, dataLen = 4 << 20, 3 << 20
	runFileDirs(t, func(t *testing.T, strategy, dir string, _ bool) {
		testSendfileReads(t, strategy, dir, size, dataLen)
	})
}

// runFileDirs runs f per strategy for a file export in memory (dir
// /dev/shm) and on disk (a test directory; onDisk set).
func runFileDirs(t *testing.T, f func(t *testing.T, strategy, dir string, onDisk bool)) {
	for _, where := range []struct{ name, dir string }{{"memory", "/dev/shm"}, {"disk", ""}} {
		t.Run(where.name, func(t *testing.T) {
			run(t, func(t *testing.T, strategy string) {
				dir := where.dir
				if dir == "" {
					dir = t.TempDir()
				}
				f(t, strategy, dir, where.dir == "")
			})
		})
	}
}

func testSendfileReads(t *testing.T, strategy, dir string, size, dataLen int) {
	data := pattern(dataLen, 9)
	f, _ := fileExport(t, dir, int64(size), data)
	srv := socketServer(t, strategy, int64(size), bufferConfig{})
	srv.Exports = []Export{{Name: "d", Backend: f}}
	sock, _ := serveUnix(t, srv)
	reads := []struct{ off, n int }{{0, 64 << 10}, {4095, 256 << 10}, {100_001, 1<<20 + 3}, {dataLen - 70_000, 70_000}}
	for _, structured := range []bool{false, true} {
		c := dialClient(t, sock)
		if structured {
			c.handshakeSR("d")
		} else {
			c.handshake("d")
		}
		for i, r := range reads { // one at a time: replies may come in any order
			c.read(uint64(i), uint64(r.off), uint32(r.n))
			want := data[r.off : r.off+r.n]
			if !structured {
				c.wantRead(uint64(i), want)
				continue
			}
			got := c.wantStructuredRead(uint64(i), uint64(r.off), want)
			// The data chunk is not final while sendfile may still fail:
			// a NONE chunk ends the reply.
			require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeOffsetData, protocol.ReplyTypeNone}, got.types, "READ %d: one data chunk, then NONE", i)
		}
		c.disc()
	}
	st := srv.BufferStats()
	require.Zero(t, st.Allocs+st.Hits, "sendfile READs take no buffer from the strategy: %+v", st)

	c := dialClient(t, sock)
	c.handshakeSR("d")
	off, n := dataLen-65536, 256<<10
	c.read(1, uint64(off), uint32(n))
	want := append(slices.Clone(data[off:]), make([]byte, n-65536)...)
	got := c.wantStructuredRead(1, uint64(off), want)
	if strategy != "stream" { // which sends READs larger than its chunk as data chunks
		require.Contains(t, got.types, protocol.ReplyTypeOffsetHole, "a READ over a hole keeps its hole chunk")
	}
}

// serveFile serves f as export "d" (strategy pool, 1 MiB) on a unix
// socket and dials it.
func serveFile(t *testing.T, f *backend.File) (*Server, *client) {
	srv := socketServer(t, "pool", 1<<20, bufferConfig{})
	srv.Exports = []Export{{Name: "d", Backend: f}}
	sock, _ := serveUnix(t, srv)
	return srv, dialClient(t, sock)
}

// TestUncachedFileReadsUseBuffers: a READ of a file on disk whose pages
// are not in the page cache is read into a buffer first (pread), so that
// the wait for the disk and any error come before the reply's header.
func TestUncachedFileReadsUseBuffers(t *testing.T) {
	data := pattern(1<<20, 5)
	f, _ := fileExport(t, t.TempDir(), 1<<20, data)
	require.NoError(t, f.Sync())
	require.NoError(t, unix.Fadvise(int(f.File().Fd()), 0, 0, unix.FADV_DONTNEED))
	require.False(t, f.Cached(0, 1<<20), "the pages were just dropped from the page cache")
	srv, c := serveFile(t, f)
	c.handshake("d")
	c.read(1, 0, 256<<10)
	c.wantRead(1, data[:256<<10])
	st := srv.BufferStats()
	require.NotZero(t, st.Allocs+st.Hits, "an uncached READ takes a buffer: %+v", st)
}

// TestSendfileFileShrank: when the file under a sendfile READ is shorter
// than the export (someone truncated it), the reply's header is already
// out and the data cannot follow: under simple replies the server
// disconnects, as it must after a failed simple reply (proto.md "Simple
// reply message"); under structured replies it pads the data chunk, which
// it had not marked final, reports the error in an ERROR_OFFSET chunk and
// carries on (proto.md "NBD_CMD_READ").
func TestSendfileFileShrank(t *testing.T) {
	t.Run("structured", testSendfileFileShrankStructured)
	f, path := fileExport(t, "/dev/shm", 1<<20, pattern(1<<20, 3))
	_, c := serveFile(t, f)
	c.handshake("d")
	require.NoError(t, os.Truncate(path, 0))
	c.read(7, 0, 256<<10)
	var hdr [protocol.SimpleReplySize]byte
	c.readFull(hdr[:])
	require.Equal(t, uint32(protocol.SimpleReplyMagic), binary.BigEndian.Uint32(hdr[:4]))
	require.Equal(t, uint64(7), binary.BigEndian.Uint64(hdr[8:]))
	c.wantClosed()
}

func testSendfileFileShrankStructured(t *testing.T) {
	data := pattern(1<<20, 3)
	f, path := fileExport(t, "/dev/shm", 1<<20, data)
	_, c := serveFile(t, f)
	c.handshakeSR("d")
	// A READ first, so that the backend has cached the data run (see
	// backend.File's SEEK_HOLE cache) and the next one, after the
	// truncation, goes out with sendfile instead of finding the hole.
	c.read(6, 0, 256<<10)
	c.wantStructuredRead(6, 0, data[:256<<10])
	const kept = 100_000
	require.NoError(t, os.Truncate(path, kept))
	c.read(7, 0, 256<<10)
	r := c.readReply()
	require.Equal(t, uint64(7), r.cookie)
	require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeOffsetData, protocol.ReplyTypeErrorOffset}, r.types)
	require.NotZero(t, r.errno)
	require.Equal(t, uint64(kept), r.errOffset, "the error is where the file ends")
	want := append(append([]byte{}, data[:kept]...), make([]byte, 256<<10-kept)...)
	require.Equal(t, want, r.data, "the data, then zeros padding the chunk")
	c.flush(8)
	c.wantReply(8, protocol.EOK) // the connection carries on
}

// TestDirectSendfileCarry: sendfile READs the reader starts itself while
// the client reads nothing (reply.go, rule 5) fill a small send buffer
// part way through a reply's data, and the writer goroutine sends the
// rest of the range and ends the reply; the replies queued behind it,
// sendfile and buffered alike, follow whole. Simple, structured and
// extended replies.
func TestDirectSendfileCarry(t *testing.T) {
	const size = 8 << 20
	data := pattern(size, 11)
	f, _ := fileExport(t, "/dev/shm", size, data)
	srv := socketServer(t, "pool", size, bufferConfig{})
	srv.SendBuffer = 64 << 10 // far less than one 1 MiB READ
	srv.Exports = []Export{{Name: "d", Backend: f}}
	sock, _ := serveUnix(t, srv)
	reads := []struct{ off, n int }{
		{0, 1 << 20}, {1<<20 + 5, 4096}, {3 << 20, 256 << 10}, {100, 512},
		{4<<20 + 1, 1 << 20}, {6 << 20, 64 << 10}, {7 << 20, 1 << 20},
	}
	for _, mode := range []string{"simple", "structured", "extended"} {
		t.Run(mode, func(t *testing.T) {
			c := dialClient(t, sock)
			switch mode {
			case "simple":
				c.handshake("d")
			case "structured":
				c.handshakeSR("d")
			default:
				c.handshakeExt("d")
			}
			for i, r := range reads { // all sent before any reply is read
				c.read(uint64(i), uint64(r.off), uint32(r.n))
			}
			got := map[uint64]reply{}
			for range reads {
				r := c.readReply()
				got[r.cookie] = r
			}
			for i, r := range reads {
				require.Contains(t, got, uint64(i))
				require.Equal(t, protocol.EOK, got[uint64(i)].errno, "READ %d", i)
				require.True(t, bytes.Equal(data[r.off:r.off+r.n], got[uint64(i)].data), "READ %d: %d bytes at %d", i, r.n, r.off)
			}
			c.flush(100)
			c.wantReply(100, protocol.EOK)
			c.disc()
		})
	}
	st := srv.Stats().Exports[0].Paths[PathReadSendfile]
	require.Equal(t, int64(3*5), st.Requests, "the READs of 64 KiB and more went out with sendfile")
}

// TestFileSender: without waiting, a send stops where the socket is full
// and says how much went out; waiting, it sends the rest as the client
// reads. Both with the raw system call (a file in memory) and the
// scheduler-aware one.
func TestFileSender(t *testing.T) {
	const n = 1 << 20
	data := pattern(n, 4)
	f, _ := fileExport(t, "/dev/shm", n, data)
	for _, inMemory := range []bool{true, false} {
		t.Run(fmt.Sprintf("inMemory=%v", inMemory), func(t *testing.T) {
			l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
			require.NoError(t, err)
			defer l.Close()
			client, err := net.Dial("unix", l.Addr().String())
			require.NoError(t, err)
			defer client.Close()
			nc, err := l.Accept()
			require.NoError(t, err)
			defer nc.Close()
			require.NoError(t, nc.(*net.UnixConn).SetWriteBuffer(64<<10))
			rc, err := nc.(syscall.Conn).SyscallConn()
			require.NoError(t, err)
			s := newFileSender(rc, inMemory, nil)
			require.Equal(t, inMemory, s.raw)

			sent, err := s.send(f.File(), 0, n, false)
			require.NoError(t, err)
			require.Greater(t, sent, int64(0))
			require.Less(t, sent, int64(n), "a 64 KiB send buffer took all of 1 MiB")
			got := make(chan []byte, 1)
			go func() {
				b := make([]byte, n)
				_, err := io.ReadFull(client, b)
				assert.NoError(t, err)
				got <- b
			}()
			rest, err := s.send(f.File(), sent, n-sent, true)
			require.NoError(t, err)
			require.Equal(t, n-sent, rest)
			require.True(t, bytes.Equal(data, <-got), "the data arrived intact")
		})
	}
}
