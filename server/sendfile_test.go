package server

import (
	"encoding/binary"
	"os"
	"slices"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// tmpfsFile returns a file export of size bytes in /dev/shm, whose first
// len(data) bytes are data and the rest a hole, and the file's path.
func tmpfsFile(t *testing.T, size int64, data []byte) (*backend.File, string) {
	t.Helper()
	if _, err := os.Stat("/dev/shm"); err != nil {
		testenv.SkipOutsideCI(t, "no /dev/shm")
	}
	tmp, err := os.CreateTemp("/dev/shm", "nbdd-server-*")
	require.NoError(t, err)
	t.Cleanup(func() { os.Remove(tmp.Name()) })
	_, err = tmp.WriteAt(data, 0)
	require.NoError(t, err)
	require.NoError(t, tmp.Truncate(size))
	f, err := backend.NewFile(tmp, false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.True(t, f.NonBlocking(), "/dev/shm must be tmpfs for this test")
	return f, tmp.Name()
}

// TestSendfileReads: large READs of a file export in memory go from the
// file to the socket with sendfile(2), taking no buffer from the strategy,
// and arrive intact under simple and structured replies (one OFFSET_DATA
// chunk); a READ that covers a hole takes the buffered path and still gets
// an OFFSET_HOLE chunk.
func TestSendfileReads(t *testing.T) {
	const size, dataLen = 4 << 20, 3 << 20
	run(t, func(t *testing.T, strategy string) {
		data := pattern(dataLen, 9)
		f, _ := tmpfsFile(t, size, data)
		srv := socketServer(t, strategy, size, bufferConfig{})
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
			for i, r := range reads {
				c.read(uint64(i), uint64(r.off), uint32(r.n))
			}
			for i, r := range reads {
				want := data[r.off : r.off+r.n]
				if !structured {
					c.wantRead(uint64(i), want)
					continue
				}
				got := c.wantStructuredRead(uint64(i), uint64(r.off), want)
				require.Equal(t, []protocol.ReplyType{protocol.ReplyTypeOffsetData}, got.types, "READ %d: one data chunk", i)
			}
			c.disc()
		}
		st := srv.BufferStats()
		require.Zero(t, st.Allocs+st.Hits, "sendfile READs take no buffer from the strategy: %+v", st)

		c := dialClient(t, sock)
		c.handshakeSR("d")
		const off, n = dataLen - 65536, 256 << 10
		c.read(1, off, n)
		want := append(slices.Clone(data[off:]), make([]byte, n-65536)...)
		got := c.wantStructuredRead(1, off, want)
		if strategy != "stream" { // which sends READs larger than its chunk as data chunks
			require.Contains(t, got.types, protocol.ReplyTypeOffsetHole, "a READ over a hole keeps its hole chunk")
		}
	})
}

// TestSendfileFileShrank: when the file under a sendfile READ is shorter
// than the export (someone truncated it), the reply's header is already
// out and the data cannot follow: the server disconnects, as it must after
// a failed simple reply (proto.md "Simple reply message").
func TestSendfileFileShrank(t *testing.T) {
	f, path := tmpfsFile(t, 1<<20, pattern(1<<20, 3))
	srv := socketServer(t, "pool", 1<<20, bufferConfig{})
	srv.Exports = []Export{{Name: "d", Backend: f}}
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.handshake("d")
	require.NoError(t, os.Truncate(path, 0))
	c.read(7, 0, 256<<10)
	var hdr [protocol.SimpleReplySize]byte
	c.readFull(hdr[:])
	require.Equal(t, uint32(protocol.SimpleReplyMagic), binary.BigEndian.Uint32(hdr[:4]))
	require.Equal(t, uint64(7), binary.BigEndian.Uint64(hdr[8:]))
	c.wantClosed()
}
