package nbdkernel

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// SocketFile turns a connection that has finished its handshake into a
// blocking socket file for the kernel, and closes c. Closing c closes only
// Go's descriptor (no shutdown), so the socket lives on in the returned
// file, a duplicate; nbd-client hands the kernel blocking sockets too.
func SocketFile(c net.Conn) (*os.File, error) {
	defer c.Close()
	fc, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("%T has no file descriptor", c)
	}
	f, err := fc.File()
	if err != nil {
		return nil, fmt.Errorf("socket file: %w", err)
	}
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, fmt.Errorf("socket file: clear O_NONBLOCK: %w", err)
	}
	return f, nil
}
