package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// TestZeroValueServer: a Server with nothing but one export serves, with
// the default buffers, limits and logger.
func TestZeroValueServer(t *testing.T) {
	checkLeaks(t)
	srv := &Server{Exports: []Export{{Name: "disk", Backend: backend.NewMemory(1 << 20)}}}
	st := newServerTester(t, "", srv)
	require.Nil(t, srv.Buffers, "the caller's Buffers field stays nil: defaults are never written back")
	st.start()
	ei := st.goExport("", protocol.InfoBlockSize)
	require.Equal(t, uint32(protocol.DefaultMaxPayload), ei.blockSize.Max)
	data := pattern(1<<20, 1)
	st.write(1, 0, data)
	st.wantReply(1, protocol.EOK)
	st.read(2, 0, 1<<20)
	st.wantRead(2, data)
	st.disc()
	st.wantClosed()
	require.NoError(t, srv.Shutdown(context.Background()), "Shutdown of an idle server")
}

// serveUnix starts srv.Serve on a unix socket in a temporary directory and
// returns the socket path and Serve's result channel.
func serveUnix(t *testing.T, srv *Server) (string, chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		select {
		case <-served:
		case <-time.After(ioTimeout):
			t.Errorf("Serve did not return after Close")
		}
	})
	return sock, served
}

func dialClient(t *testing.T, sock string) *client {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return newClient(t, nc)
}

// socketServer returns a server for Serve tests: one memory export "mem"
// of size bytes and the strategy's buffers.
func socketServer(t *testing.T, strategy string, size int64, bc bufferConfig) *Server {
	return &Server{
		Exports: []Export{{Name: "mem", Backend: backend.NewMemory(size)}},
		Buffers: newFactory(t, strategy, protocol.DefaultMaxPayload, bc),
		Logger:  testLogger(t),
	}
}

func TestServeUnixShutdown(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		srv := socketServer(t, strategy, 1<<20, bufferConfig{})
		sock, served := serveUnix(t, srv)
		// Two clients at once, each with its own data.
		a, b := dialClient(t, sock), dialClient(t, sock)
		a.handshake("mem")
		b.handshake("mem")
		a.write(1, 0, []byte("from a"))
		b.write(1, 100, []byte("from b"))
		a.wantReply(1, protocol.EOK)
		b.wantReply(1, protocol.EOK)
		a.read(2, 100, 6)
		a.wantRead(2, []byte("from b"))

		require.NoError(t, srv.Shutdown(context.Background()))
		select {
		case err := <-served:
			require.ErrorIs(t, err, ErrServerClosed, "Serve after Shutdown")
			served <- err
		case <-time.After(ioTimeout):
			t.Fatal("Serve did not return after Shutdown")
		}
		a.wantClosed()
		b.wantClosed()
		_, err := net.Dial("unix", sock)
		require.Error(t, err, "dial after Shutdown")
		require.ErrorIs(t, srv.Serve(nil), ErrServerClosed, "Serve after Shutdown")
	})
}

// TestBadClientDoesNotHurtOthers: a client that breaks the protocol loses
// its own connection only.
func TestBadClientDoesNotHurtOthers(t *testing.T) {
	checkLeaks(t)
	srv := &Server{Exports: []Export{{Name: "mem", Backend: backend.NewMemory(1 << 20)}}, Logger: testLogger(t)}
	sock, _ := serveUnix(t, srv)
	good := dialClient(t, sock)
	good.handshake("mem")
	bad := dialClient(t, sock)
	bad.handshake("mem")
	bad.writeRaw([]byte("GET / HTTP/1.1\r\nHost: nbd\r\n\r\n"))
	bad.wantClosed()
	good.write(1, 0, []byte("still here"))
	good.wantReply(1, protocol.EOK)
	late := dialClient(t, sock)
	late.handshake("mem")
	late.read(1, 0, 10)
	late.wantRead(1, []byte("still here"))
}

// TestShutdownWaitsForInflight: Shutdown lets a slow request finish and
// its reply reach the client, answers new requests with ESHUTDOWN,
// flushes the export, and only then returns.
func TestShutdownWaitsForInflight(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		p, release := newGatedProbe(t, nil)
		st := newServerTester(t, strategy, &Server{Exports: []Export{{Name: "p", Backend: p}}})
		st.handshake("p")
		st.read(1, 0, 4096)
		<-p.started // the slow READ is in the backend

		shut := make(chan error, 1)
		go func() { shut <- st.srv.Shutdown(context.Background()) }()
		for !st.srv.inShutdown.Load() {
			time.Sleep(time.Millisecond)
		}
		st.read(2, 8192, 512)
		st.wantReply(2, protocol.ESHUTDOWN)
		st.write(3, 8192, pattern(70000, 1)) // refused, its payload skipped
		st.wantReply(3, protocol.ESHUTDOWN)
		st.flush(4)
		st.wantReply(4, protocol.ESHUTDOWN)
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with a request in flight", err)
		case <-time.After(50 * time.Millisecond):
		}
		release()
		st.wantRead(1, make([]byte, 4096))
		select {
		case err := <-shut:
			require.NoError(t, err, "Shutdown")
		case <-time.After(ioTimeout):
			t.Fatal("Shutdown did not return")
		}
		require.GreaterOrEqual(t, p.syncs.Load(), int64(1), "Sync calls by Shutdown")
		st.wantClosed()
		st.wantServeResult(func(err error) bool { return err == nil || errors.Is(err, ErrServerClosed) }, "nil or ErrServerClosed")
	})
}

// TestShutdownDeadline: when ctx ends first, Shutdown closes what is left
// and returns ctx's error at once, even with a request stuck in the
// backend.
func TestShutdownDeadline(t *testing.T) {
	p, release := newGatedProbe(t, nil)
	st := newServerTester(t, "pool", &Server{Exports: []Export{{Name: "p", Backend: p}}})
	st.handshake("p")
	st.read(1, 0, 512)
	<-p.started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	begin := time.Now()
	require.ErrorIs(t, st.srv.Shutdown(ctx), context.DeadlineExceeded)
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("Shutdown returned after %v; want soon after its 50ms deadline", d)
	}
	st.client.wantClosed()
	release() // the stuck request ends; then so does ServeConn
	st.wantServeResult(func(err error) bool { return errors.Is(err, ErrServerClosed) }, "ErrServerClosed")
}

// TestShutdownClosesHandshakes: a connection still negotiating when
// Shutdown begins gets NBD_REP_ERR_SHUTDOWN for its options for a short
// grace period, and is then closed rather than waited for.
func TestShutdownClosesHandshakes(t *testing.T) {
	st := newServerTester(t, "pool", nil)
	st.start()
	st.list()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		shut <- st.srv.Shutdown(ctx)
	}()
	for !st.srv.inShutdown.Load() {
		time.Sleep(time.Millisecond)
	}
	st.option(protocol.OptList, nil, protocol.RepErrShutdown)
	st.option(protocol.OptGo, protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: "mem"}), protocol.RepErrShutdown)
	st.wantClosed()
	require.NoError(t, <-shut, "Shutdown")
	// A connection offered after Shutdown is refused at once.
	c1, c2 := net.Pipe()
	defer c1.Close()
	require.ErrorIs(t, st.srv.ServeConn(context.Background(), c2), ErrServerClosed)
}

// TestServeConnContext: cancelling ServeConn's context closes the
// connection, in the handshake and in transmission.
func TestServeConnContext(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		for _, transmitting := range []bool{false, true} {
			st := newServerTester(t, strategy, nil)
			st.start()
			if transmitting {
				st.goExport("mem")
			}
			st.cancel()
			st.wantClosed()
		}
	})
}

// TestIdleTimeout: an idle transmission is closed after IdleTimeout, but
// not while a request is in flight.
func TestIdleTimeout(t *testing.T) {
	f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultRead, Offset: 0, Length: 512, Delay: 300 * time.Millisecond})
	st := newServerTester(t, "pool", &Server{IdleTimeout: 100 * time.Millisecond, Exports: []Export{{Name: "f", Backend: f}}})
	st.handshake("f")
	st.read(1, 0, 512) // slower than the idle timeout
	st.wantRead(1, make([]byte, 512))
	begin := time.Now()
	st.wantClosed()
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("idle connection closed after %v; want about 100ms", d)
	}
}

// TestIdleTimeoutKeepsPartialHeader: when the idle deadline fires in the
// middle of a header while a request is in flight, the bytes already read
// are kept, and the header is completed, not read afresh out of step.
func TestIdleTimeoutKeepsPartialHeader(t *testing.T) {
	f := backend.NewFault(backend.NewMemory(1<<20), backend.FaultRule{Op: backend.FaultRead, Offset: 0, Length: 512, Delay: 400 * time.Millisecond})
	st := newServerTester(t, "pool", &Server{IdleTimeout: 100 * time.Millisecond, Exports: []Export{{Name: "f", Backend: f}}})
	st.handshake("f")
	st.read(1, 0, 512) // in flight while the deadline fires
	hdr := requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdFlush, Cookie: 2}, nil)
	st.writeRaw(hdr[:10])
	time.Sleep(250 * time.Millisecond)
	st.writeRaw(hdr[10:])
	st.wantReply(2, protocol.EOK)
	st.wantRead(1, make([]byte, 512))
}

// TestIdleTimeoutClosesStalledReader: a client that stops reading replies
// is closed after IdleTimeout too, rather than holding its requests and
// their buffers for good.
func TestIdleTimeoutClosesStalledReader(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		const size = 16 << 20 // more than the socket buffers hold
		path := filepath.Join(t.TempDir(), "img")
		require.NoError(t, os.WriteFile(path, pattern(size, 3), 0o600)) // cached: sent with sendfile
		f, err := backend.OpenFile(path, true)
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		srv := socketServer(t, strategy, size, bufferConfig{})
		srv.Exports = append(srv.Exports, Export{Name: "file", Backend: f})
		srv.IdleTimeout = 100 * time.Millisecond
		sock, _ := serveUnix(t, srv)
		for _, export := range []string{"mem", "file"} {
			c := dialClient(t, sock)
			c.handshake(export)
			c.read(1, 0, size)
			time.Sleep(500 * time.Millisecond) // read nothing
			c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
			n, err := io.Copy(io.Discard, c.br)
			require.NoError(t, err, "%s: the server closed the connection (EOF)", export)
			require.Less(t, n, int64(size), "%s: only part of the reply was sent", export)
		}
	})
}

// readSlowly sends a simple READ of n bytes from offset 0 and reads the
// reply 64 KiB every 20 ms (about 3 MiB/s), failing if it is cut off.
func (c *client) readSlowly(n int, what string) {
	c.t.Helper()
	c.read(1, 0, uint32(n))
	var hdr [protocol.SimpleReplySize]byte
	c.readFull(hdr[:])
	buf := make([]byte, 64<<10)
	for got := 0; got < n; {
		c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
		k, err := io.ReadFull(c.br, buf[:min(len(buf), n-got)])
		got += k
		require.NoError(c.t, err, "%s: cut off after %d of %d bytes, though the client kept reading", what, got, n)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIdleTimeoutSparesSlowReader: the stall deadline bounds how long a
// client reads nothing, not how long a reply takes: a client that reads
// a large reply slowly but steadily gets all of it, whether it goes out
// with writev (memory) or sendfile (a cached file).
func TestIdleTimeoutSparesSlowReader(t *testing.T) {
	const size = 2 << 20
	path := filepath.Join(t.TempDir(), "img")
	require.NoError(t, os.WriteFile(path, pattern(size, 4), 0o600))
	f, err := backend.OpenFile(path, true)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	srv := socketServer(t, "pool", size, bufferConfig{})
	srv.Exports = append(srv.Exports, Export{Name: "file", Backend: f})
	srv.IdleTimeout = 150 * time.Millisecond
	srv.SendBuffer = 64 << 10
	sock, _ := serveUnix(t, srv)
	for _, export := range []string{"mem", "file"} {
		c := dialClient(t, sock)
		c.handshake(export)
		c.readSlowly(size, export)
	}
}

// payloadServer serves, with idle as IdleTimeout, the three ways a WRITE
// payload is read: a memory export (into its pages), a file in /dev/shm
// (spliced) and a file on disk (into buffers), as "mem", "shm" and
// "disk", 4 MiB each; it returns the server's socket.
func payloadServer(t *testing.T, strategy string, idle time.Duration) string {
	const size = 4 << 20
	srv := socketServer(t, strategy, size, bufferConfig{})
	shm, _ := fileExport(t, "/dev/shm", size, nil)
	disk, _ := fileExport(t, t.TempDir(), size, nil)
	srv.Exports = append(srv.Exports, Export{Name: "shm", Backend: shm}, Export{Name: "disk", Backend: disk})
	srv.IdleTimeout = idle
	sock, _ := serveUnix(t, srv)
	return sock
}

// TestIdleTimeoutClosesStalledWriter: a client that stops part way
// through a WRITE's payload is as idle as one that sends nothing, and is
// closed after IdleTimeout, whichever way the payload is read.
func TestIdleTimeoutClosesStalledWriter(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		sock := payloadServer(t, strategy, 100*time.Millisecond)
		for _, export := range []string{"mem", "shm", "disk"} {
			c := dialClient(t, sock)
			c.handshake(export)
			hdr := requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Cookie: 1, Length: 1 << 20}, nil)
			c.writeRaw(append(hdr, make([]byte, 100<<10)...)) // then nothing
			begin := time.Now()
			c.wantClosed()
			require.GreaterOrEqual(t, time.Since(begin), 50*time.Millisecond, "%s: closed before the client was idle", export)
		}
	})
}

// TestIdleTimeoutSparesSlowWriter: a payload sent slowly but steadily,
// taking several idle timeouts in all, is read to the end and written.
func TestIdleTimeoutSparesSlowWriter(t *testing.T) {
	sock := payloadServer(t, "pool", 150*time.Millisecond)
	for _, export := range []string{"mem", "shm", "disk"} {
		c := dialClient(t, sock)
		c.handshake(export)
		data := pattern(1<<20, 7)
		c.writeRaw(requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdWrite, Cookie: 1, Length: uint64(len(data))}, nil))
		for off := 0; off < len(data); off += 64 << 10 {
			c.writeRaw(data[off : off+64<<10])
			time.Sleep(40 * time.Millisecond) // the whole payload takes 0.64 s
		}
		c.wantReply(1, protocol.EOK)
		c.read(2, 0, uint32(len(data)))
		c.wantRead(2, data)
	}
}

// TestMaxConns: connections over the limit are closed before the greeting,
// and a slot is free again once a client leaves. MaxConnsPerHost counts
// TCP clients by address; unix-socket clients count only toward MaxConns
// (TestUnixPeersNotPerHost).
func TestMaxConns(t *testing.T) {
	for _, tc := range []struct {
		name    string
		srv     *Server
		network string
	}{{"MaxConns", &Server{MaxConns: 1}, "unix"}, {"MaxConnsPerHost", &Server{MaxConnsPerHost: 1}, "tcp"}} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			srv := tc.srv
			srv.Exports = []Export{{Name: "mem", Backend: backend.NewMemory(1 << 20)}}
			srv.Logger = testLogger(t)
			dial := dialerFor(t, srv, tc.network)
			first := dial()
			first.handshake("mem")
			second := dial()
			second.wantClosed()
			first.disc()
			first.wantClosed()
			deadline := time.Now().Add(ioTimeout)
			for {
				c := dial()
				c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
				if _, err := c.br.Peek(1); err == nil {
					c.handshake("mem")
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no connection admitted after the first client left")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// dialerFor serves srv on a unix socket or on TCP 127.0.0.1 and returns a
// function that connects a client to it.
func dialerFor(t *testing.T, srv *Server, network string) func() *client {
	t.Helper()
	if network == "unix" {
		sock, _ := serveUnix(t, srv)
		return func() *client { return dialClient(t, sock) }
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return func() *client {
		nc, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { nc.Close() })
		return newClient(t, nc)
	}
}

// TestManyClientsPipelined: several clients on real sockets, each with many
// requests in flight on its own region of one export, read back exactly
// what they wrote.
func TestManyClientsPipelined(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		const clients, perClient, region = 4, 48, 256 << 10
		srv := socketServer(t, strategy, clients*region, bufferConfig{budget: 256 << 10})
		sock, _ := serveUnix(t, srv)
		errc := make(chan error, clients)
		for i := range clients {
			c := dialClient(t, sock)
			c.handshake("mem")
			go func() { errc <- pipelineClient(c, uint64(i*region), region, perClient, byte(i)) }()
		}
		for range clients {
			if err := <-errc; err != nil {
				t.Error(err)
			}
		}
	})
}

// pipelineClient writes count blocks of varying size into its region with
// all requests in flight at once, then reads them all back the same way.
// It runs off the test goroutine, so it reports errors instead of failing.
func pipelineClient(c *client, base uint64, region, count int, seed byte) error {
	type block struct {
		off  uint64
		data []byte
	}
	var blocks []block
	off := base
	for i := range count {
		n := 1 + (i*7919)%(region/count-1)
		blocks = append(blocks, block{off, pattern(n, seed+byte(i))})
		off += uint64(region / count)
	}
	var writes, reads []protocol.Request
	var payloads [][]byte
	for i, b := range blocks {
		writes = append(writes, protocol.Request{Type: protocol.CmdWrite, Cookie: uint64(i), Offset: b.off, Length: uint32(len(b.data))})
		payloads = append(payloads, b.data)
		reads = append(reads, protocol.Request{Type: protocol.CmdRead, Cookie: uint64(i), Offset: b.off, Length: uint32(len(b.data))})
	}
	for _, phase := range []struct {
		reqs     []protocol.Request
		payloads [][]byte
	}{{writes, payloads}, {reads, nil}} {
		errc := c.sendAll(phase.reqs, phase.payloads)
		for range phase.reqs {
			r, err := c.tryReadReply()
			if err != nil {
				return err
			}
			if r.errno != 0 {
				return fmt.Errorf("client %d: %v %d: %v", seed, phase.reqs[r.cookie].Type, r.cookie, r.errno)
			}
			if phase.payloads == nil && !bytes.Equal(r.data, blocks[r.cookie].data) {
				return fmt.Errorf("client %d: READ %d at %d: data differs", seed, r.cookie, blocks[r.cookie].off)
			}
		}
		if err := <-errc; err != nil {
			return err
		}
	}
	return nil
}

// TestSocketReads: READs on a real socket, where memory exports lend their
// pages to writev instead of copying, return the right bytes across
// written and unwritten chunks, simple and structured.
func TestSocketReads(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		checkLeaks(t)
		sock, _ := serveUnix(t, socketServer(t, strategy, 1<<20, bufferConfig{}))
		want := make([]byte, 1<<20)
		for _, sr := range []bool{false, true} {
			c := dialClient(t, sock)
			if sr {
				c.handshakeSR("mem")
			} else {
				c.handshake("mem")
			}
			// Data in the second chunk only, crossing into the third.
			data := pattern(70000, 5)
			c.write(1, 65536+1000, data)
			c.wantReply(1, protocol.EOK)
			copy(want[65536+1000:], data)
			for i, rng := range [][2]int{{0, 100}, {65000, 2000}, {60000, 200_000}, {131000, 65536}, {1<<20 - 3, 3}} {
				off, n := rng[0], rng[1]
				cookie := uint64(10 + i)
				c.read(cookie, uint64(off), uint32(n))
				if sr {
					c.wantStructuredRead(cookie, uint64(off), want[off:off+n])
				} else {
					c.wantRead(cookie, want[off:off+n])
				}
			}
			c.disc()
			c.wantClosed()
		}
	})
}

// TestMaxRequestSizeLimit: the zero value means 32 MiB, values beyond
// what one OFFSET_DATA chunk can carry are capped, and values below the
// largest preferred block size are raised to it.
func TestMaxRequestSizeLimit(t *testing.T) {
	for _, tc := range []struct{ set, want uint32 }{
		{0, protocol.DefaultMaxPayload},
		{1, MinRequestSizeLimit},
		{1024, MinRequestSizeLimit},
		{MinRequestSizeLimit, MinRequestSizeLimit},
		{1 << 20, 1 << 20},
		{MaxRequestSizeLimit, MaxRequestSizeLimit},
		{math.MaxUint32, MaxRequestSizeLimit},
	} {
		require.Equal(t, tc.want, (&Server{MaxRequestSize: tc.set}).maxRequestSize(), "MaxRequestSize %d", tc.set)
	}
}

// TestPayloadClockIgnoresServerWaits: the idle clock of a WRITE payload
// starts when the server reads it, not while the reader waits for a
// queue slot behind a slow request: a client that sent everything at once
// is not cut off.
func TestPayloadClockIgnoresServerWaits(t *testing.T) {
	f := backend.NewFault(backend.NewMemory(4<<20), backend.FaultRule{Op: backend.FaultWrite, Offset: 0, Length: 4096, Delay: 600 * time.Millisecond})
	srv := socketServer(t, "pool", 4<<20, bufferConfig{})
	srv.Exports = []Export{{Name: "f", Backend: f}}
	srv.IdleTimeout = 200 * time.Millisecond
	srv.QueueDepth = 1
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.handshake("f")
	data := pattern(1<<20, 9)
	wait := c.sendAsync([]protocol.Request{
		{Type: protocol.CmdWrite, Cookie: 1, Offset: 0, Length: 4096},
		{Type: protocol.CmdWrite, Cookie: 2, Offset: 1 << 20, Length: uint32(len(data))},
	}, make([]byte, 4096), data)
	c.wantReply(1, protocol.EOK)
	c.wantReply(2, protocol.EOK)
	wait()
}

// slowPipeFile is a file export whose spliced writes are slow, as a busy
// disk's are.
type slowPipeFile struct{ *backend.File }

func (s slowPipeFile) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	time.Sleep(60 * time.Millisecond)
	return s.File.WriteFromPipe(pipe, off, n)
}

// TestPayloadClockIgnoresSlowDisk: time the server spends writing a
// streamed payload to a slow disk is not the client's idleness.
func TestPayloadClockIgnoresSlowDisk(t *testing.T) {
	const size = 4 << 20
	f, _ := fileExport(t, t.TempDir(), size, nil)
	srv := socketServer(t, "stream", size, bufferConfig{})
	srv.Exports = []Export{{Name: "slow", Backend: slowPipeFile{f}}}
	srv.IdleTimeout = 300 * time.Millisecond
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.handshake("slow")
	data := pattern(size, 5)
	wait := c.sendAsync([]protocol.Request{{Type: protocol.CmdWrite, Cookie: 1, Length: uint32(len(data))}}, data)
	c.wantReply(1, protocol.EOK)
	wait()
}
