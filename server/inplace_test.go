package server

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// inPlaceBackends are the backends whose WRITEs are read from the socket
// straight into their memory (backend.WriteViewer), with a check of what
// reached stable storage after a FLUSH, where there is any.
func inPlaceBackends(t *testing.T, size int64) map[string]struct {
	b      backend.Backend
	stored func() []byte
} {
	mem := backend.NewMemory(size)
	anon, err := backend.NewMapped(size, false)
	require.NoError(t, err)
	img := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(img, make([]byte, size), 0o600))
	persist, err := backend.LoadMapped(img, false, true)
	require.NoError(t, err)
	t.Cleanup(func() { anon.Close(); persist.Close() })
	readImg := func() []byte {
		b, err := os.ReadFile(img)
		require.NoError(t, err)
		return b
	}
	return map[string]struct {
		b      backend.Backend
		stored func() []byte
	}{
		"memory":           {b: mem},
		"mapped":           {b: anon},
		"mapped-persisted": {b: persist, stored: readImg},
	}
}

// syncWaits reports whether b's Sync may wait (backend.SyncWaiter).
func syncWaits(b backend.Backend) bool {
	sw, ok := b.(backend.SyncWaiter)
	return ok && sw.SyncWaits()
}

// TestInPlaceWrites: WRITEs of every size, at offsets that straddle the
// memory export's 64 KiB chunks, sent whole or in slow pieces (so the
// server waits inside readv), land where they belong, and a FLUSH makes
// them durable in a persistent mapped export.
func TestInPlaceWrites(t *testing.T) {
	const size = 4 << 20
	run(t, func(t *testing.T, strategy string) {
		for name, tc := range inPlaceBackends(t, size) {
			t.Run(name, func(t *testing.T) {
				_, ok := tc.b.(backend.WriteViewer)
				require.True(t, ok, "the backend under test must lend its memory for writes")
				srv := socketServer(t, strategy, size, bufferConfig{})
				srv.Exports = []Export{{Name: "d", Backend: tc.b}}
				sock, _ := serveUnix(t, srv)
				c := dialClient(t, sock)
				c.handshake("d")
				want := make([]byte, size)
				off := 65536 - 3
				for i, n := range []int{1, 100, 4096, 65536, 65537, 200_000, 1 << 20} {
					data := pattern(n, byte(i+1))
					req := protocol.Request{Type: protocol.CmdWrite, Cookie: uint64(i), Offset: uint64(off), Length: uint32(n)}
					if i%2 == 1 && !syncWaits(tc.b) { // else FUA writes take buffers (TestSlowSyncNotInline)
						req.Flags = protocol.CmdFlagFUA
					}
					if i >= 3 {
						sendSlowly(c, req, data)
					} else {
						c.send(req, data)
					}
					c.wantReply(uint64(i), protocol.EOK)
					copy(want[off:], data)
					off += n + 65536 + 5
				}
				st := srv.BufferStats()
				require.Zero(t, st.Allocs+st.Hits, "writes in place take no buffer from the strategy: %+v", st)
				c.read(100, 0, size/2)
				c.wantRead(100, want[:size/2])
				c.read(101, size/2, size/2)
				c.wantRead(101, want[size/2:])
				if tc.stored != nil {
					c.flush(102)
					c.wantReply(102, protocol.EOK)
					require.True(t, bytes.Equal(want, tc.stored()), "image after FLUSH differs from what was written")
				}
			})
		}
	})
}

// sendSlowly sends req's header and its payload in three pieces with pauses
// between them.
func sendSlowly(c *client, req protocol.Request, payload []byte) {
	c.t.Helper()
	var hdr [protocol.RequestSize]byte
	req.Put(&hdr)
	third := len(payload) / 3
	c.writeRaw(append(hdr[:], payload[:third]...))
	time.Sleep(20 * time.Millisecond)
	c.writeRaw(payload[third : 2*third])
	time.Sleep(20 * time.Millisecond)
	c.writeRaw(payload[2*third:])
}

// TestInPlaceWriteClientGone: a client that dies in the middle of a large
// WRITE payload costs its own connection only; the server goes on serving
// the others.
func TestInPlaceWriteClientGone(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		srv := socketServer(t, strategy, 4<<20, bufferConfig{})
		srv.Exports[0].Name = "d"
		sock, _ := serveUnix(t, srv)
		quitter := dialClient(t, sock)
		quitter.handshake("d")
		var hdr [protocol.RequestSize]byte
		protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Length: 1 << 20}.Put(&hdr)
		quitter.writeRaw(append(hdr[:], make([]byte, 300_000)...))
		time.Sleep(20 * time.Millisecond)
		quitter.nc.Close()

		other := dialClient(t, sock)
		other.handshake("d")
		data := pattern(300_000, 7)
		other.write(2, 1000, data)
		other.wantReply(2, protocol.EOK)
		other.read(3, 1000, uint32(len(data)))
		other.wantRead(3, data)
	})
}

func TestAdvance(t *testing.T) {
	a, b := make([]byte, 10), make([]byte, 5)
	vecs := func() []unix.Iovec {
		v := []unix.Iovec{{Base: &a[0]}, {Base: &b[0]}}
		v[0].SetLen(len(a))
		v[1].SetLen(len(b))
		return v
	}
	tests := []struct {
		n        int
		wantLen  int    // vecs left
		wantBase *byte  // start of the first
		wantRest uint64 // its length
	}{
		{0, 2, &a[0], 10},
		{3, 2, &a[3], 7},
		{10, 1, &b[0], 5},
		{12, 1, &b[2], 3},
		{15, 0, nil, 0},
	}
	for _, tt := range tests {
		got := advance(vecs(), tt.n)
		require.Len(t, got, tt.wantLen, "advance by %d", tt.n)
		if tt.wantLen > 0 {
			require.Equal(t, unsafe.Pointer(tt.wantBase), unsafe.Pointer(got[0].Base), "advance by %d: base", tt.n)
			require.Equal(t, tt.wantRest, uint64(got[0].Len), "advance by %d: length", tt.n)
		}
	}
}

// TestHeaderAfterInPlaceWrite: after a small payload read straight into
// the export, the next request is read through the read buffer, so a
// small WRITE sent whole arrives with its payload and takes no readv;
// after a large one the next header is read alone and its payload is
// read into the export.
func TestHeaderAfterInPlaceWrite(t *testing.T) {
	const size = 4 << 20
	run(t, func(t *testing.T, strategy string) {
		srv := socketServer(t, strategy, size, bufferConfig{})
		srv.Exports = []Export{{Name: "d", Backend: backend.NewMemory(size)}}
		sock, _ := serveUnix(t, srv)
		c := dialClient(t, sock)
		c.handshake("d")
		small := pattern(4096, 1)
		cookie := uint64(0)
		// writeAfter sends a WRITE of n bytes in slow pieces (so its
		// payload is read into the export), then a 4 KiB WRITE in one
		// piece, and returns the bytes the second one took with readv.
		writeAfter := func(n int) int64 {
			cookie++
			sendSlowly(c, protocol.Request{Type: protocol.CmdWrite, Cookie: cookie, Length: uint32(n)}, pattern(n, 2))
			c.wantReply(cookie, protocol.EOK)
			before := exportStats(srv, "d").Paths[PathWriteIntoExport].Bytes
			require.Positive(t, before, "the slow WRITE's payload was read into the export")
			cookie++
			c.write(cookie, 1<<20, small)
			c.wantReply(cookie, protocol.EOK)
			return exportStats(srv, "d").Paths[PathWriteIntoExport].Bytes - before
		}
		require.Zero(t, writeAfter(4096), "a 4 KiB WRITE after a small one came through the read buffer")
		require.EqualValues(t, len(small), writeAfter(exactHeaderMin), "a 4 KiB WRITE after a large one was read into the export")
		c.read(99, 1<<20, 4096)
		c.wantRead(99, small)
	})
}
