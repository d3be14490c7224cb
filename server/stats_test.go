package server

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// TestStats: Server.Stats counts each request by command, errno and data
// path, per export, over the connections that are open and those that
// have ended, under every strategy; and it may be called while requests
// run (the race detector watches).
func TestStats(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		srv := socketServer(t, strategy, 1<<20, bufferConfig{})
		srv.Exports = append(srv.Exports, Export{Name: "plain", Backend: bare{backend.NewMemory(1 << 20)}})
		sock, _ := serveUnix(t, srv)
		require.Empty(t, srv.Stats().Exports, "no export selected yet")

		c := dialClient(t, sock)
		c.handshake("mem")
		data := pattern(4096, 1)
		c.write(1, 0, data)
		c.wantReply(1, protocol.EOK)
		c.read(2, 0, 4096)
		c.wantRead(2, data)
		c.flush(3)
		c.wantReply(3, protocol.EOK)
		c.read(4, 1<<20, 1) // past the end
		c.wantReply(4, protocol.EINVAL)
		c.cmd(99, 5, 0, 0)
		c.wantReply(5, protocol.EINVAL)

		st := srv.Stats()
		require.Equal(t, 1, st.Conns)
		es, ok := st.Export("mem")
		require.True(t, ok)
		require.Equal(t, int64(1), es.Conns)
		require.Equal(t, map[protocol.Cmd]int64{protocol.CmdRead: 2, protocol.CmdWrite: 1, protocol.CmdFlush: 1,
			protocol.CmdTrim: 0, protocol.CmdCache: 0, protocol.CmdWriteZeroes: 0, protocol.CmdBlockStatus: 0}, es.Requests)
		require.Equal(t, int64(1), es.UnknownCmds)
		require.Equal(t, int64(2), es.Errors[protocol.EINVAL])
		require.Equal(t, int64(4096), es.ReadBytes)
		require.Equal(t, int64(4096), es.WriteBytes)
		require.Equal(t, PathStats{Requests: 1, Bytes: 4096, OnReader: 1}, es.Paths[PathReadLent], "a memory export lends its pages")
		require.Equal(t, PathStats{Requests: 1, Bytes: 4096, OnReader: 1}, es.Paths[PathWriteFromReadBuffer])
		for cmd, n := range es.Requests {
			// Every request but the unknown one was answered; a reply
			// is counted once written, so a read may be a moment late.
			require.Eventually(t, func() bool { return exportStats(srv, "mem").Latency[cmd].Count() == n },
				ioTimeout, time.Millisecond, "%v: latency count; want %d", cmd, n)
		}
		require.Positive(t, exportStats(srv, "mem").Latency[protocol.CmdRead].Sum)

		// A backend with no capabilities: buffers, and goroutines of
		// their own.
		p := dialClient(t, sock)
		p.handshake("plain")
		p.write(1, 0, data)
		p.wantReply(1, protocol.EOK)
		p.read(2, 0, 4096)
		p.wantRead(2, data)
		pl := exportStats(srv, "plain")
		require.Equal(t, PathStats{Requests: 1, Bytes: 4096}, pl.Paths[PathReadBuffered], "%+v", pl.Paths)
		require.Equal(t, PathStats{Requests: 1, Bytes: 4096}, pl.Paths[PathWriteBuffered], "%+v", pl.Paths)

		// Counts stay after the connection ends, and add up across
		// connections.
		c.disc()
		c.wantClosed()
		require.Eventually(t, func() bool { return srv.Stats().Conns == 1 }, ioTimeout, time.Millisecond)
		c = dialClient(t, sock)
		c.handshake("mem")
		c.read(1, 0, 4096)
		c.wantRead(1, data)
		es = exportStats(srv, "mem")
		require.Equal(t, int64(2), es.Conns)
		require.Equal(t, int64(3), es.Requests[protocol.CmdRead])
		require.Equal(t, int64(8192), es.ReadBytes)
	})
}

// TestStatsUnderLoad: Stats read while connections come, go and send
// requests sees counts that only grow.
func TestStatsUnderLoad(t *testing.T) {
	srv := socketServer(t, "pool", 1<<20, bufferConfig{})
	sock, _ := serveUnix(t, srv)
	var clients []*client
	for range 12 {
		c := dialClient(t, sock)
		c.handshake("mem")
		clients = append(clients, c)
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pipelineClient(c, uint64(i)<<16, 64<<10, 50, byte(i)); err != nil {
				t.Error(err)
			}
			c.nc.Close()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var last int64
	for {
		es := exportStats(srv, "mem")
		n := es.Requests[protocol.CmdRead] + es.Requests[protocol.CmdWrite]
		require.GreaterOrEqual(t, n, last, "requests counted went down")
		last = n
		select {
		case <-done:
			es := exportStats(srv, "mem")
			require.Equal(t, int64(12), es.Conns)
			require.Equal(t, int64(12*2*50), es.Requests[protocol.CmdRead]+es.Requests[protocol.CmdWrite])
			return
		default:
		}
	}
}

// TestStatsLatency: a request's latency runs from its header to its
// reply: READs that the backend delays by 20ms land in the buckets above
// 16ms, FLUSHes that it does not delay below it, and the sums agree.
func TestStatsLatency(t *testing.T) {
	const delay = 20 * time.Millisecond
	srv := socketServer(t, "pool", 1<<20, bufferConfig{})
	srv.Exports[0].Backend = backend.NewFault(backend.NewMemory(1<<20),
		backend.FaultRule{Op: backend.FaultRead, Delay: delay})
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.handshake("mem")
	for i := range 3 {
		c.read(uint64(i), 0, 4096)
		c.wantRead(uint64(i), make([]byte, 4096))
		c.flush(100 + uint64(i))
		c.wantReply(100+uint64(i), protocol.EOK)
	}
	var es ExportStats
	require.Eventually(t, func() bool {
		es = exportStats(srv, "mem")
		return es.Latency[protocol.CmdRead].Count() == 3 && es.Latency[protocol.CmdFlush].Count() == 3
	}, ioTimeout, time.Millisecond)
	reads, flushes := es.Latency[protocol.CmdRead], es.Latency[protocol.CmdFlush]
	slow := latencyBucket(int64(delay)) // the first bucket that holds 20ms
	require.Equal(t, 32768*time.Microsecond, LatencyBound(slow), "20ms falls in the 32.768ms bucket")
	require.Zero(t, sum(reads.Counts[:slow]), "READs delayed %v, counted faster: %v", delay, reads.Counts)
	require.Zero(t, sum(flushes.Counts[slow:]), "FLUSHes not delayed, counted as slow: %v", flushes.Counts)
	require.GreaterOrEqual(t, reads.Sum, 3*delay)
	require.Less(t, flushes.Sum, 3*delay)
}

func sum(counts []int64) (n int64) {
	for _, c := range counts {
		n += c
	}
	return n
}

// TestLatencyBucket: each latency goes in the smallest bucket whose
// bound holds it, and past the last bound in the overflow bucket.
func TestLatencyBucket(t *testing.T) {
	us := int64(time.Microsecond)
	for _, tt := range []struct {
		ns   int64
		want int
	}{
		{-5, 0}, {0, 0}, {1, 0}, {4 * us, 0}, {4*us + 1, 1}, {8 * us, 1}, {8*us + 1, 2},
		{16 * us, 2}, {1000 * us, 8}, {int64(LatencyBound(LatencyBuckets - 1)), LatencyBuckets - 1},
		{int64(LatencyBound(LatencyBuckets-1)) + 1, LatencyBuckets}, {1 << 62, 51},
	} {
		if got := latencyBucket(tt.ns); got != tt.want {
			t.Errorf("latencyBucket(%d) = %d; want %d", tt.ns, got, tt.want)
		}
		if i := latencyBucket(tt.ns); i < LatencyBuckets && tt.ns > 0 {
			require.LessOrEqual(t, tt.ns, int64(LatencyBound(i)))
			if i > 0 {
				require.Greater(t, tt.ns, int64(LatencyBound(i-1)))
			}
		}
	}
}

// TestStatsConnections: Stats counts the connections served and those
// refused, by reason: over MaxConns, from an address Access.Addrs does
// not allow, and export selections an export's Access refuses.
func TestStatsConnections(t *testing.T) {
	serveTCP := func(srv *Server) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		return l.Addr().String()
	}
	dial := func(addr string) *client {
		nc, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { nc.Close() })
		return newClient(t, nc)
	}
	elsewhere := Access{Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}

	srv := socketServer(t, "pool", 1<<20, bufferConfig{})
	srv.MaxConns = 1
	srv.Exports = append(srv.Exports, Export{Name: "locked", Backend: backend.NewMemory(1 << 20), Access: elsewhere})
	addr := serveTCP(srv)
	a := dial(addr)
	a.start()
	_, rep := a.infoOrGoErr(protocol.OptInfo, "locked")
	require.Equal(t, protocol.RepErrPolicy, rep.typ)
	a.goExport("mem")
	dial(addr).wantClosed() // over MaxConns
	st := srv.Stats()
	require.Equal(t, [4]int64{1, 1, 0, 1}, [4]int64{st.Accepted, st.RefusedLimit, st.RefusedAddr, st.RefusedExport},
		"accepted, refused: limit, address, export")

	closed := socketServer(t, "pool", 1<<20, bufferConfig{})
	closed.Access = elsewhere
	dial(serveTCP(closed)).wantClosed()
	st = closed.Stats()
	require.Equal(t, [4]int64{0, 0, 1, 0}, [4]int64{st.Accepted, st.RefusedLimit, st.RefusedAddr, st.RefusedExport},
		"accepted, refused: limit, address, export")
}
