package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/kernel/nbdkernel"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
)

// attachCLI runs nbdd with args the way main does, without exiting, and
// returns the exit status and the error line.
func attachCLI(t *testing.T, args ...string) (status int, msg string) {
	t.Helper()
	app := newApp()
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	app.ExitErrHandler = func(*cli.Context, error) {} // keep cli from calling os.Exit
	err := app.Run(append([]string{"nbdd"}, args...))
	if err == nil {
		return 0, ""
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode(), err.Error()
	}
	return 1, err.Error()
}

func TestAttachUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"attach"}, "attach takes a server and a device (got 0 arguments)"},
		{[]string{"attach", "127.0.0.1:10809"}, "got 1 arguments"},
		{[]string{"attach", "a:1", "/dev/nbd0", "extra"}, "got 3 arguments"},
		{[]string{"attach", "ftp://host", "/dev/nbd0"}, `attach: server "ftp://host": want nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, HOST:PORT or unix:PATH`},
		{[]string{"attach", "hostonly", "/dev/nbd0"}, `attach: server "hostonly": want HOST:PORT`},
		{[]string{"attach", "--block-size", "1000", "a:1", "/dev/nbd0"}, "--block-size 1000: want 512, 1024, 2048 or 4096"},
		{[]string{"attach", "--block-size", "0", "a:1", "/dev/nbd0"}, "--block-size 0: want 512"},
		{[]string{"attach", "--connections", "0", "a:1", "/dev/nbd0"}, "--connections 0: want 1 to 64"},
		{[]string{"attach", "--connections", "65", "a:1", "/dev/nbd0"}, "--connections 65: want 1 to 64"},
		{[]string{"attach", "--connections", "two", "a:1", "/dev/nbd0"}, `invalid value "two" for --connections`},
		{[]string{"attach", "--timeout", "-1s", "a:1", "/dev/nbd0"}, "--timeout -1s: must not be negative"},
		{[]string{"attach", "--timeout", "soon", "a:1", "/dev/nbd0"}, `invalid value "soon" for --timeout`},
		{[]string{"attach", "--netlink", "--ioctl", "a:1", "/dev/nbd0"}, "--netlink and --ioctl are exclusive"},
		{[]string{"attach", "--no-such-flag", "a:1", "/dev/nbd0"}, "unknown flag --no-such-flag"},
		{[]string{"attach", "--export", string(make([]byte, 4097)), "a:1", "/dev/nbd0"}, "--export of 4097 bytes, at most 4096"},
		{[]string{"attach", "nbds://host/x", "/dev/nbd0"}, "the kernel client cannot use TLS"},
		{[]string{"attach", "nbd+unix:///x", "/dev/nbd0"}, "want nbd+unix:///EXPORT?socket=PATH"},
		{[]string{"attach", "nbd:///x", "/dev/nbd0"}, "want nbd://HOST[:PORT]/EXPORT"},
		{[]string{"attach", "--export", "a", "nbd://h/b", "/dev/nbd0"}, `--export "a" and the URI's export "b" differ`},
		{[]string{"detach"}, "detach takes one device (got 0 arguments)"},
		{[]string{"detach", "/dev/nbd0", "/dev/nbd1"}, "got 2 arguments"},
		{[]string{"detach", "--netlink", "--ioctl", "/dev/nbd0"}, "--netlink and --ioctl are exclusive"},
	} {
		t.Run(tc.msg, func(t *testing.T) {
			status, msg := attachCLI(t, tc.args...)
			require.Equal(t, 2, status, "exit status; message %q", msg)
			require.Contains(t, msg, tc.msg)
		})
	}
}

// A device that does not exist is a runtime error (status 1) explained in
// one line, found before any connection is made: the server address here
// does not answer.
// TestParseAttachServer: attach takes the URIs nbdd serve prints, as
// well as what --listen takes.
func TestParseAttachServer(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want attachServer
	}{
		{"nbd://127.0.0.1:10810/disk", attachServer{"tcp", "127.0.0.1:10810", "disk", true}},
		{"nbd://example.org/", attachServer{"tcp", "example.org:10809", "", true}},
		{"nbd://[::1]:7/a%20b", attachServer{"tcp", "[::1]:7", "a b", true}},
		{"nbd+unix:///disk?socket=/run/nbdd.sock", attachServer{"unix", "/run/nbdd.sock", "disk", true}},
		{"nbd+unix:///?socket=rel.sock", attachServer{"unix", "rel.sock", "", true}},
		{"127.0.0.1:10809", attachServer{"tcp", "127.0.0.1:10809", "", false}},
		{"unix:///run/nbdd.sock", attachServer{"unix", "/run/nbdd.sock", "", false}},
		{"unix:rel.sock", attachServer{"unix", "rel.sock", "", false}},
	} {
		got, err := parseAttachServer(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseAttachServer(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestAttachMissingDevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "nbd9")
	for _, args := range [][]string{
		{"attach", "--export", "x", "127.0.0.1:1", dev},
		{"attach", "--ioctl", "unix:///nonexistent", dev},
		{"detach", dev},
	} {
		status, msg := attachCLI(t, args...)
		require.Equal(t, 1, status, "%v: %s", args, msg)
		require.Contains(t, msg, dev+" does not exist")
		if _, err := os.Stat("/sys/module/nbd"); err != nil {
			require.Equal(t, "nbd module not loaded: "+dev+" does not exist (modprobe nbd)", msg)
		}
	}
}

func TestAttachNotABlockDevice(t *testing.T) {
	f := filepath.Join(t.TempDir(), "nbd0")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	status, msg := attachCLI(t, "attach", "127.0.0.1:1", f)
	require.Equal(t, 1, status)
	require.Equal(t, f+" is not a block device", msg)
}

// noMultiConn is a backend without backend.MultiConner.
type noMultiConn struct{ io.ReaderAt }

func (noMultiConn) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (noMultiConn) Size() (int64, error)                     { return 1 << 20, nil }
func (noMultiConn) Sync() error                              { return nil }

// growingSource serves "grow" with a size that changes on every open.
type growingSource struct{ n atomic.Int64 }

func (g *growingSource) Open(name string) (*server.Export, func() error, error) {
	if name != "grow" {
		return nil, nil, nil
	}
	size := 4096 * g.n.Add(1)
	return &server.Export{Name: name, Backend: backend.NewMemory(size)}, func() error { return nil }, nil
}

func (g *growingSource) List() ([]server.Export, error) { return nil, nil }

// startAttachServer serves the test exports on a unix socket.
func startAttachServer(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &server.Server{
		Exports: []server.Export{
			{Name: "mem", Backend: backend.NewMemory(1 << 20)},
			{Name: "single", Backend: noMultiConn{bytes.NewReader(make([]byte, 1<<20))}},
		},
		Source: &growingSource{},
		Logger: slog.New(slog.DiscardHandler),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return sock
}

func TestOpenConnections(t *testing.T) {
	sock := startAttachServer(t)
	opts := func(export string, n int) attachOptions {
		return attachOptions{network: "unix", addr: sock, export: export, connections: n}
	}
	for _, n := range []int{1, 3} {
		exp, socks, err := openConnections(t.Context(), opts("mem", n))
		require.NoError(t, err)
		require.Equal(t, uint64(1<<20), exp.Size)
		require.NotZero(t, exp.Flags&protocol.FlagCanMultiConn, "flags %v", exp.Flags)
		require.Len(t, socks, n)
		for _, f := range socks {
			requireReadReply(t, f) // each socket is at the start of transmission
		}
		closeFiles(socks)
	}

	_, socks, err := openConnections(t.Context(), opts("single", 1))
	require.NoError(t, err)
	closeFiles(socks)
	_, _, err = openConnections(t.Context(), opts("single", 2))
	require.EqualError(t, err, "server does not allow multiple connections (no NBD_FLAG_CAN_MULTI_CONN): use --connections 1")

	_, _, err = openConnections(t.Context(), opts("grow", 2))
	require.ErrorContains(t, err, "connection 2: the export changed between connections (size 8192")

	_, _, err = openConnections(t.Context(), opts("nope", 2))
	require.ErrorIs(t, err, nbdkernel.ErrRefused)
	require.ErrorContains(t, err, `connection 1 of 2: `+sock+`: nbd: server refused the export "nope"`)

	_, _, err = openConnections(t.Context(), attachOptions{network: "unix", addr: sock + "-missing", connections: 1})
	require.ErrorContains(t, err, "no such file or directory")
}

// requireReadReply sends NBD_CMD_READ on f and reads the reply: the
// handshake left f at the start of the transmission phase.
func requireReadReply(t *testing.T, f *os.File) {
	t.Helper()
	rep, err := nbdclient.Unbuffered(f).Do(protocol.Request{Type: protocol.CmdRead, Cookie: 7, Offset: 4096, Length: 4096}, nil)
	require.NoError(t, err)
	require.Equal(t, protocol.EOK, rep.Errno)
	require.Len(t, rep.Data, 4096)
}

func TestOpenConnectionsCancelled(t *testing.T) {
	// A server that accepts and never greets: a signal must end the wait.
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer l.Close()
	ctx, cancel := context.WithCancel(t.Context())
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
			// The signal comes while the handshake waits for the greeting.
			time.AfterFunc(50*time.Millisecond, cancel)
		}
	}()
	start := time.Now()
	_, _, err = openConnections(ctx, attachOptions{network: "unix", addr: sock, connections: 1})
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, time.Since(start), 5*time.Second)
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the server never accepted the connection")
	}
}

func TestAttachedLine(t *testing.T) {
	o := attachOptions{addr: "10.0.2.100:10809", device: "/dev/nbd1", export: "mem", connections: 2}
	cfg := nbdkernel.Config{Size: 1 << 30, BlockSize: 512}
	require.Equal(t, `nbdd: /dev/nbd1 attached to 10.0.2.100:10809 export "mem" (1 GiB, block size 512, 2 connections, netlink)`,
		attachedLine(o, cfg, "netlink"))
}
