package server

import (
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestReadSome: the raw reader behind the read buffer returns what the
// socket holds, waits when it holds nothing, honours read deadlines, and
// reports a client that closed as io.EOF, as net.Conn's Read does.
func TestReadSome(t *testing.T) {
	a, b := unixPair(t)
	rc, err := a.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	v := newVecIO(rc, false)
	buf := make([]byte, 16)

	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := v.readSome(buf); n != 0 || !isTimeout(err) {
		t.Fatalf("readSome on an empty socket past its deadline = %d, %v; want a timeout", n, err)
	}
	a.SetReadDeadline(time.Time{})

	go func() {
		time.Sleep(10 * time.Millisecond) // readSome is waiting by now, most likely
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
