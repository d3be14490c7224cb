package server

import (
	"bytes"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// blockingDisk is a backend whose reads block their OS thread in a
// system call, as a pread from a busy disk does, and which counts the
// calls in progress.
type blockingDisk struct {
	size      int64
	cur, peak atomic.Int64
}

func (d *blockingDisk) ReadAt(p []byte, off int64) (int, error) {
	n := d.cur.Add(1)
	defer d.cur.Add(-1)
	for p := d.peak.Load(); n > p && !d.peak.CompareAndSwap(p, n); p = d.peak.Load() {
	}
	ts := unix.NsecToTimespec(20e6)
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
	for i := range p {
		p[i] = byte(off + int64(i))
	}
	return len(p), nil
}

func (d *blockingDisk) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (d *blockingDisk) Size() (int64, error)                     { return d.size, nil }
func (d *blockingDisk) Sync() error                              { return nil }

// TestMaxBackendCalls: however many requests are in flight on however
// many connections, no more than MaxBackendCalls backend calls run at
// once, each holding a thread; the others wait their turn and all are
// answered.
func TestMaxBackendCalls(t *testing.T) {
	const limit, conns, perConn, size = 8, 6, 16, 4096
	disk := &blockingDisk{size: 1 << 20}
	srv := &Server{
		Exports:         []Export{{Name: "disk", Backend: disk}},
		MaxBackendCalls: limit,
		Logger:          testLogger(t),
	}
	sock, _ := serveUnix(t, srv)
	var clients []*client
	for range conns {
		c := dialClient(t, sock)
		c.handshake("disk")
		for i := range perConn {
			c.read(uint64(i), uint64(i*size), size)
		}
		clients = append(clients, c)
	}
	for _, c := range clients {
		for range perConn {
			r := c.readReply()
			if r.errno != 0 {
				t.Fatalf("READ %d: error %v", r.cookie, r.errno)
			}
			want := make([]byte, size)
			for i := range want {
				want[i] = byte(int(r.cookie)*size + i)
			}
			if !bytes.Equal(r.data, want) {
				t.Fatalf("READ %d: wrong data", r.cookie)
			}
		}
		c.disc()
	}
	if peak := disk.peak.Load(); peak != limit {
		t.Errorf("%d backend calls at once at most; want the bound, %d", peak, limit)
	}
}
