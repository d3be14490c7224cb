package server

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestSendBuffer(t *testing.T) {
	const asked = 768 << 10
	for _, tc := range []struct {
		name    string
		network string
		setting int
		want    int // SetWriteBuffer argument expected, 0 for untouched
	}{
		{"unix default", "unix", 0, DefaultUnixSendBuffer},
		{"unix set", "unix", asked, asked},
		{"unix kernel's", "unix", -1, 0},
		{"tcp default is autotuned", "tcp", 0, 0},
		{"tcp set", "tcp", asked, asked},
		{"tcp kernel's", "tcp", -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := acceptedConn(t, tc.network)
			before := sendBuffer(t, nc)
			c := newConn(&Server{SendBuffer: tc.setting}, nc, func() {})
			got := sendBuffer(t, c.nc)
			if tc.want == 0 {
				require.Equal(t, before, got, "SO_SNDBUF changed")
				return
			}
			// Linux doubles what it is asked for, up to twice wmem_max.
			require.Equal(t, 2*min(tc.want, wmemMax(t)), got)
		})
	}
}

// acceptedConn returns the server side of a fresh loopback connection.
func acceptedConn(t *testing.T, network string) net.Conn {
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	l, err := net.Listen(network, addr)
	require.NoError(t, err)
	defer l.Close()
	client, err := net.Dial(network, l.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	nc, err := l.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return nc
}

func sendBuffer(t *testing.T, nc net.Conn) int {
	rc, err := nc.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	var n int
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) {
		n, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	}))
	require.NoError(t, serr)
	return n
}

func wmemMax(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/core/wmem_max")
	require.NoError(t, err)
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	return n
}
