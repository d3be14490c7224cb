package server

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadSome: the raw reader behind the read buffer returns what the
// socket holds, waits when it holds nothing, honours read deadlines, and
// reports a client that closed as io.EOF, as net.Conn's Read does.
func TestReadSome(t *testing.T) {
	a, b, _, v := rawReaderPair(t)
	buf := make([]byte, 16)

	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := v.readSome(buf); n != 0 || !isTimeout(err) {
		t.Fatalf("readSome on an empty socket past its deadline = %d, %v; want a timeout", n, err)
	}
	a.SetReadDeadline(time.Time{})

	waiting := make(chan struct{})
	v.onBlock = sync.OnceFunc(func() { close(waiting) }) // readSome found the socket empty
	go func() {
		<-waiting
		b.Write([]byte("abc"))
		b.Close()
	}()
	if n, err := v.readSome(buf); n != 3 || err != nil || string(buf[:3]) != "abc" {
		t.Fatalf("readSome = %d, %v, %q; want 3, nil, \"abc\"", n, err, buf[:n])
	}
	if n, err := v.readSome(buf); n != 0 || err != io.EOF {
		t.Fatalf("readSome after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := v.readSome(nil); n != 0 || err != nil {
		t.Fatalf("readSome(nil) = %d, %v; want 0, nil", n, err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// unixPair is two ends of a connected unix socket.
func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// rawReaderPair is a connected pair of unix sockets and a vecIO reading
// the first one, with that socket's RawConn.
func rawReaderPair(t *testing.T) (a, b net.Conn, rc syscall.RawConn, v *vecIO) {
	t.Helper()
	a, b = unixPair(t)
	rc, err := a.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return a, b, rc, newVecIO(rc, false)
}

// TestPollableSocket: the descriptors of the standard library's net.Conns are
// polled non-blocking sockets, so vecIO makes raw calls on them; a
// blocking socket, such as an *os.File a library user hands to ServeConn,
// and anything that is not a socket get ordinary calls.
func TestPollableSocket(t *testing.T) {
	a, _ := unixPair(t)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	blocking := os.NewFile(uintptr(fds[0]), "blocking")
	t.Cleanup(func() { blocking.Close(); syscall.Close(fds[1]) })
	pr, pw, err := os.Pipe() // non-blocking and polled, but no socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close(); pw.Close() })
	for _, tc := range []struct {
		name string
		c    syscall.Conn
		want bool
	}{
		{"net.Conn", a.(syscall.Conn), true},
		{"blocking socket *os.File", blocking, false},
		{"pipe", pr, false},
	} {
		rc, err := tc.c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		if v := newVecIO(rc, false); v.raw != tc.want {
			t.Errorf("%s: raw = %v; want %v", tc.name, v.raw, tc.want)
		}
	}
}

// TestRawReadSurvivesBlockingMode: a raw read stays non-blocking after
// the socket's O_NONBLOCK flag is cleared behind the server's back (as
// os.File.Fd does to a copy of the descriptor), so an empty socket parks
// the goroutine on the poller instead of holding a P in the kernel.
func TestRawReadSurvivesBlockingMode(t *testing.T) {
	a, b, rc, v := rawReaderPair(t)
	if !v.raw {
		t.Fatal("net.Conn not read raw")
	}
	rc.Control(func(fd uintptr) {
		if err := unix.SetNonblock(int(fd), false); err != nil {
			t.Fatal(err)
		}
	})
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		_, err := v.readSome(make([]byte, 8))
		done <- err
	}()
	select {
	case err := <-done:
		if !isTimeout(err) {
			t.Fatalf("readSome on an empty socket = %v; want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		b.Write([]byte("x")) // unblock a read stuck in the kernel
		t.Fatal("readSome blocked in the kernel past its deadline")
	}
}
