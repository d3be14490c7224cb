package server

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// TestExportMultiConnAndBlockSizes: Export.MultiConn advertises
// NBD_FLAG_CAN_MULTI_CONN for a backend that does not say so, and the
// block size fields are announced and enforced.
func TestExportMultiConnAndBlockSizes(t *testing.T) {
	checkLeaks(t)
	srv := &Server{Logger: testLogger(t), Exports: []Export{
		{Name: "plain", Backend: noMultiConnBackend{backend.NewMemory(1 << 20)}},
		{Name: "tuned", Backend: noMultiConnBackend{backend.NewMemory(1 << 20)}, MultiConn: true,
			MinBlockSize: 512, PreferredBlockSize: 64 << 10, MaxBlockSize: 256 << 10},
		{Name: "bad", Backend: backend.NewMemory(1 << 20), MinBlockSize: 1000},
	}}
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.start()
	plain := c.info("plain", protocol.InfoBlockSize)
	require.Zero(t, plain.flags&protocol.FlagCanMultiConn, "plain: flags %v", plain.flags)
	require.Equal(t, protocol.BlockSize{Min: 1, Preferred: 4096, Max: protocol.DefaultMaxPayload}, *plain.blockSize)
	_, rep := c.infoOrGoErr(protocol.OptInfo, "bad")
	require.Equal(t, protocol.RepErrPlatform, rep.typ, "an export whose MinBlockSize is not a power of 2")
	tuned := c.goExport("tuned", protocol.InfoBlockSize)
	require.NotZero(t, tuned.flags&protocol.FlagCanMultiConn, "tuned: flags %v", tuned.flags)
	require.Equal(t, protocol.BlockSize{Min: 512, Preferred: 64 << 10, Max: 256 << 10}, *tuned.blockSize)
	c.read(1, 0, 256<<10)
	c.wantRead(1, make([]byte, 256<<10))
	c.read(2, 0, 256<<10+512)
	c.wantReply(2, protocol.EINVAL)
	c.read(3, 100, 512)
	c.wantReply(3, protocol.EINVAL)
	c.disc()
	c.wantClosed()
	require.NoError(t, srv.Shutdown(context.Background()))
}

type noMultiConnBackend struct{ backend.Backend }

// concurrencyProbe is a backend that records how many of its calls ever
// ran at once.
type concurrencyProbe struct {
	backend.Backend
	active, most atomic.Int32
}

func (p *concurrencyProbe) enter() func() {
	n := p.active.Add(1)
	for {
		m := p.most.Load()
		if n <= m || p.most.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond) // long enough for others to arrive
	return func() { p.active.Add(-1) }
}

func (p *concurrencyProbe) ReadAt(b []byte, off int64) (int, error) {
	defer p.enter()()
	return p.Backend.ReadAt(b, off)
}

func (p *concurrencyProbe) WriteAt(b []byte, off int64) (int, error) {
	defer p.enter()()
	return p.Backend.WriteAt(b, off)
}

// TestSerialBackend: with Export.SerialBackend, a backend is called one
// request at a time even with several connections and many requests in
// flight on each; without it, the same load calls it concurrently.
func TestSerialBackend(t *testing.T) {
	for _, serial := range []bool{false, true} {
		checkLeaks(t)
		probe := &concurrencyProbe{Backend: noMultiConnBackend{backend.NewMemory(1 << 20)}}
		srv := &Server{Logger: testLogger(t), Exports: []Export{{Name: "d", Backend: probe, SerialBackend: serial}}}
		sock, _ := serveUnix(t, srv)
		var wg sync.WaitGroup
		for range 3 {
			c := dialClient(t, sock)
			c.handshake("d")
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 16 {
					c.write(uint64(i), uint64(i)*4096, pattern(4096, byte(i)))
				}
				for i := range 16 {
					c.read(uint64(100+i), uint64(i)*4096, 4096)
				}
				for range 32 {
					c.readReply()
				}
				c.disc()
				c.wantClosed()
			}()
		}
		wg.Wait()
		require.NoError(t, srv.Shutdown(context.Background()))
		if serial {
			require.EqualValues(t, 1, probe.most.Load(), "backend calls at once with SerialBackend")
		} else {
			require.Greater(t, probe.most.Load(), int32(1), "backend calls at once without SerialBackend: the probe must see concurrency for the serial case to mean anything")
		}
	}
}
