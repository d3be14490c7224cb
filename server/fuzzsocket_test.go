package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/protocol"
	"golang.org/x/sys/unix"
)

// fuzzSocketExports are the exports FuzzTransmissionSocket serves, one
// per kind of data path: "mem" lends its pages (writev, readv into the
// export), "shm" is a file in memory (sendfile, splice), "disk" a file on
// a disk (the reader's tries of the page cache, sendfile of cached data),
// "bare" has no capability (buffers, goroutines of their own).
var fuzzSocketExports = [...]string{"mem", "shm", "disk", "bare"}

// fuzzSocketServers are shared by every input of a fuzz run, one per
// strategy: "pool" under a 1 MiB budget, and "stream" with its smallest
// chunk, so that READs and WRITEs above 4 KiB stream. Their files are
// unlinked at once, so nothing is left behind by the fuzzing processes.
var fuzzSocketServers = sync.OnceValues(func() ([2]*Server, error) {
	var srvs [2]*Server
	for i, strategy := range []string{bufstrategy.NamePool, bufstrategy.NameStream} {
		srv, err := newFuzzSocketServer(strategy)
		if err != nil {
			return srvs, err
		}
		srvs[i] = srv
	}
	return srvs, nil
})

func newFuzzSocketServer(strategy string) (*Server, error) {
	budget, _ := bufstrategy.NewBudget(1 << 20)
	bufs, err := bufstrategy.New(strategy, bufstrategy.Config{MaxRequest: fuzzMaxRequest, Budget: budget,
		StreamChunk: bufstrategy.MinChunk, ReclaimTick: -1})
	if err != nil {
		return nil, err
	}
	shm, err := unlinkedFile("/dev/shm")
	if err != nil {
		return nil, err
	}
	disk, err := unlinkedFile(os.TempDir())
	if err != nil {
		return nil, err
	}
	return &Server{
		Exports: []Export{
			{Name: "mem", Backend: backend.NewMemory(fuzzExportSize)},
			{Name: "shm", Backend: shm},
			{Name: "disk", Backend: disk},
			{Name: "bare", Backend: bare{backend.NewMemory(fuzzExportSize)}},
		},
		MaxRequestSize: fuzzMaxRequest,
		Buffers:        bufs,
		Logger:         slog.New(slog.DiscardHandler),
	}, nil
}

// unlinkedFile is a file export of fuzzExportSize in dir, half data,
// whose name is gone already.
func unlinkedFile(dir string) (*backend.File, error) {
	f, err := os.CreateTemp(dir, "nbdd-fuzz-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, fuzzExportSize/2), 0); err != nil {
		return nil, err
	}
	if err := f.Truncate(fuzzExportSize); err != nil {
		return nil, err
	}
	return backend.NewFile(f, false)
}

// socketPair returns the two ends of a unix socketpair as net.Conns, the
// kind of connection on which the server makes raw system calls and the
// kernel copies payloads.
func socketPair() (server, client net.Conn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
	}
	return conns[0], conns[1], nil
}

// wholeRequests reports whether requests, as renumber returned it, is
// made of the sent requests and nothing after them.
func wholeRequests(requests []byte, sent sentRequests, mode protocol.Mode) bool {
	n := 0
	for _, req := range sent {
		n += mode.RequestSize() + int(mode.PayloadLength(req))
	}
	return n == len(requests)
}

// serveSocket runs one client byte stream through ServeConn over a real
// socket pair and returns what the server wrote, failing on a hang. With
// reset, a server that hangs up on bytes it has not read may end the
// output with a reset (ECONNRESET), as a protocol violation allows.
func serveSocket(t *testing.T, srv *Server, data []byte, reset bool) []byte {
	sc, cc, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), sc)
	}()
	go func() {
		cc.Write(data) // the server may close early: bad magic, DISC
		cc.(*net.UnixConn).CloseWrite()
	}()
	cc.SetReadDeadline(time.Now().Add(fuzzTimeLimit))
	out, err := io.ReadAll(cc)
	if err != nil && !(reset && errors.Is(err, syscall.ECONNRESET)) {
		buf := make([]byte, 1<<20)
		t.Fatalf("reading the server's output: %v\n%s", err, buf[:runtime.Stack(buf, true)])
	}
	select {
	case <-done:
	case <-time.After(fuzzTimeLimit):
		buf := make([]byte, 1<<20)
		t.Fatalf("ServeConn still running after %v on a finished stream\n%s", fuzzTimeLimit, buf[:runtime.Stack(buf, true)])
	}
	return out
}

// FuzzTransmissionSocket is FuzzTransmission over a real socket pair, so
// that the fast paths a transcript never takes are fuzzed too: vectored
// writes and reads of lent memory, sendfile, splice, direct writes of
// held replies, the reader's tries of the page cache, and streamed
// replies. export picks the export and the strategy (fuzzSocketServers),
// mode the form of the messages (fuzzMode).
func FuzzTransmissionSocket(f *testing.F) {
	for _, mode := range fuzzModes {
		for _, s := range requestSeeds(mode) {
			for export := range 2 * len(fuzzSocketExports) {
				f.Add(s, uint8(mode), uint8(export))
			}
		}
		write := protocol.CmdFlag(0)
		if mode == protocol.ModeExtended {
			write = protocol.CmdFlagPayloadLen
		}
		large := bytes.Join([][]byte{
			requestBytes(mode, protocol.ExtendedRequest{Type: protocol.CmdWrite, Flags: write, Length: fuzzMaxRequest}, bytes.Repeat([]byte{0xa5}, fuzzMaxRequest)),
			requestBytes(mode, protocol.ExtendedRequest{Type: protocol.CmdRead, Offset: 0, Length: fuzzMaxRequest}, nil),
			requestBytes(mode, protocol.ExtendedRequest{Type: protocol.CmdRead, Offset: fuzzExportSize / 4, Length: fuzzMaxRequest}, nil),
			requestBytes(mode, protocol.ExtendedRequest{Type: protocol.CmdRead, Offset: 4096, Length: 4096}, nil),
		}, nil)
		for i := range 2 * len(fuzzSocketExports) {
			f.Add(large, uint8(mode), uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, requests []byte, mode uint8, export uint8) {
		srvs, err := fuzzSocketServers()
		if err != nil {
			t.Skipf("no file exports: %v", err)
		}
		n := len(fuzzSocketExports)
		name, srv := fuzzSocketExports[int(export)%n], srvs[int(export)/n%2]
		m := fuzzMode(mode)
		requests, sent := renumber(requests, m)
		// A stream of whole requests gets a DISC, so every one of them
		// must be answered; one that breaks off or breaks the protocol
		// may lose the replies in flight when the server hangs up.
		whole := wholeRequests(requests, sent, m)
		if whole {
			requests = append(requests, requestBytes(m, protocol.ExtendedRequest{Type: protocol.CmdDisc}, nil)...)
		}
		out := serveSocket(t, srv, append(handshakePrefix(name, m), requests...), !whole)
		checkRepliesOf(t, out, sent, m, whole)
	})
}
