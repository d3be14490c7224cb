package server

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// lender is a backend that may block and lends each READ a buffer of its
// own (backend.Lender). A released buffer is overwritten, so a reply sent
// from it after its release shows as wrong data; out counts the loans
// not yet released.
type lender struct {
	mem     *backend.Memory
	out     atomic.Int64
	lent    atomic.Int64
	failAt  int64 // a Lend at this offset fails (-1: none)
	release chan struct{}
}

func newLender(size int64, data []byte) *lender {
	l := &lender{mem: backend.NewMemory(size), failAt: -1}
	l.mem.WriteAt(data, 0)
	return l
}

func (l *lender) ReadAt(p []byte, off int64) (int, error)  { return l.mem.ReadAt(p, off) }
func (l *lender) WriteAt(p []byte, off int64) (int, error) { return l.mem.WriteAt(p, off) }
func (l *lender) Size() (int64, error)                     { return l.mem.Size() }
func (l *lender) Sync() error                              { return nil }

var errLendFailed = errors.New("lend failed")

func (l *lender) Lend(iov [][]byte, off, n int64) ([][]byte, backend.Loan, error) {
	if off == l.failAt {
		return iov, nil, errLendFailed
	}
	buf := make([]byte, n)
	if _, err := l.mem.ReadAt(buf, off); err != nil {
		return iov, nil, err
	}
	l.out.Add(1)
	l.lent.Add(1)
	return append(iov, buf[:n/2], buf[n/2:]), &testLoan{l: l, buf: buf}, nil
}

type testLoan struct {
	l    *lender
	buf  []byte
	once sync.Once
}

func (t *testLoan) Release() {
	released := false
	t.once.Do(func() {
		released = true
		poison(t.buf)
		t.l.out.Add(-1)
	})
	if !released {
		panic("a loan released twice")
	}
}

// poison overwrites b with 0xee bytes, doubling copies (fast under -race).
func poison(b []byte) {
	if len(b) == 0 {
		return
	}
	b[0] = 0xee
	for k := 1; k < len(b); k *= 2 {
		copy(b[k:], b[:k])
	}
}

// requireLoansBack waits for every loan of l to be released.
func requireLoansBack(t *testing.T, l *lender) {
	t.Helper()
	require.Eventually(t, func() bool { return l.out.Load() == 0 }, 5*time.Second, time.Millisecond,
		"%d loans never released", l.out.Load())
}

// TestLentReads: READs of a Lender's export go out from the buffers it
// lends (PathReadLent), with simple and structured replies, and every loan
// is released once its reply is out, or when the Lend failed.
func TestLentReads(t *testing.T) {
	const size = 4 << 20
	data := pattern(size, 21)
	run(t, func(t *testing.T, strategy string) {
		for _, sr := range []bool{false, true} {
			l := newLender(size, data)
			l.failAt = 3 << 20
			srv, c := serveExportD(t, strategy, size, l, sr)
			reads := []struct {
				off uint64
				n   uint32
			}{{0, 256 << 10}, {4096, 4096}, {100, 3000}, {1 << 20, 1 << 20}}
			for i, r := range reads { // one at a time: they run on goroutines
				c.read(uint64(i), r.off, r.n)
				want := data[r.off : r.off+uint64(r.n)]
				if sr {
					c.wantStructuredRead(uint64(i), r.off, want)
				} else {
					c.wantRead(uint64(i), want)
				}
			}
			c.read(99, 3<<20, 4096)
			c.wantReply(99, protocol.EIO)
			requireLoansBack(t, l)
			require.Equal(t, int64(len(reads)), l.lent.Load(), "every READ was lent")
			require.Equal(t, int64(len(reads)+1), exportStats(srv, "d").Paths[PathReadLent].Requests)
		}
	})
}

// TestLentReadsClientGone: a client that asks for large READs and
// closes its socket without reading the replies fails the server's
// writes; every loan is released all the same.
func TestLentReadsClientGone(t *testing.T) {
	const size = 8 << 20
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		l := newLender(size, pattern(size, 5))
		srv := socketServer(t, strategy, size, bufferConfig{})
		srv.Exports = []Export{{Name: "d", Backend: l}}
		sock, _ := serveUnix(t, srv)
		c := dialClient(t, sock)
		c.handshake("d")
		for i := range 32 {
			c.read(uint64(i), uint64(i%8)<<20, 1<<20)
		}
		require.Eventually(t, func() bool { return l.lent.Load() > 0 }, 5*time.Second, time.Millisecond)
		c.nc.Close()
		requireLoansBack(t, l)
	})
}
