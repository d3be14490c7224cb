package nbdkernel

import (
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestSocketFileOutlivesConn(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	peer := <-accepted
	require.NotNil(t, peer)
	defer peer.Close()

	f, err := SocketFile(c)
	require.NoError(t, err)
	defer f.Close()
	_, err = c.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed, "SocketFile closes the conn")

	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	require.NoError(t, err)
	require.Zero(t, flags&unix.O_NONBLOCK, "the kernel gets a blocking socket")

	// The socket itself lives on in the file.
	_, err = peer.Write([]byte("ping"))
	require.NoError(t, err)
	b := make([]byte, 4)
	_, err = io.ReadFull(f, b)
	require.NoError(t, err)
	require.Equal(t, "ping", string(b))
}

func TestSocketFileNeedsAFileDescriptor(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	_, err := SocketFile(a)
	require.ErrorContains(t, err, "has no file descriptor")
}
