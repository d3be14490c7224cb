package nbdkernel

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netlinkTimeout bounds every wait for a netlink reply.
const netlinkTimeout = 10 * time.Second

// genlConn is a NETLINK_GENERIC socket that sends one request at a time
// and waits for its acknowledgement.
type genlConn struct {
	fd  int
	seq uint32
}

func dialGenl() (*genlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	c := &genlConn{fd: fd, seq: uint32(time.Now().Unix())}
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		c.close()
		return nil, fmt.Errorf("netlink socket: SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		c.close()
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return c, nil
}

func (c *genlConn) close() { unix.Close(c.fd) }

// request sends one generic netlink command and returns the payloads of
// the replies that precede the acknowledgement. A negative error in the
// acknowledgement is returned as a syscall.Errno.
func (c *genlConn) request(family uint16, cmd, version uint8, a attrs) ([][]byte, error) {
	c.seq++
	msg := genlMessage(family, c.seq, cmd, version, a)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	var replies [][]byte
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := parseMessages(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.seq != c.seq {
				continue // a stale reply to an earlier request
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if len(m.payload) < 4 {
					return nil, errors.New("netlink: short NLMSG_ERROR")
				}
				if e := int32(ne.Uint32(m.payload)); e != 0 {
					return nil, syscall.Errno(-e)
				}
				return replies, nil
			case unix.NLMSG_DONE:
				return replies, nil
			default:
				replies = append(replies, append([]byte(nil), m.payload...))
			}
		}
	}
}

// family resolves a generic netlink family name to its id through the
// controller (CTRL_CMD_GETFAMILY).
func (c *genlConn) family(name string) (uint16, error) {
	replies, err := c.request(unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, ctrlVersion,
		attrs(nil).str(unix.CTRL_ATTR_FAMILY_NAME, name))
	if errors.Is(err, unix.ENOENT) {
		return 0, fmt.Errorf("%w: no generic netlink family %q", ErrNoModule, name)
	}
	if err != nil {
		return 0, fmt.Errorf("resolve generic netlink family %q: %w", name, err)
	}
	for _, r := range replies {
		if len(r) < sizeofGenlmsghdr {
			continue
		}
		as, err := parseAttrs(r[sizeofGenlmsghdr:])
		if err != nil {
			return 0, err
		}
		if id := as[unix.CTRL_ATTR_FAMILY_ID]; len(id) >= 2 {
			return ne.Uint16(id), nil
		}
	}
	return 0, fmt.Errorf("resolve generic netlink family %q: no CTRL_ATTR_FAMILY_ID in the reply", name)
}

// nbdRequest sends one command to the nbd family.
func nbdRequest(cmd uint8, a attrs) error {
	c, err := dialGenl()
	if err != nil {
		return err
	}
	defer c.close()
	fam, err := c.family(familyName)
	if err != nil {
		return err
	}
	_, err = c.request(fam, cmd, genlVersion, a)
	return err
}

// Connect attaches /dev/nbd<cfg.Index> to the connections socks, each of
// which has finished its handshake, with NBD_CMD_CONNECT. When it returns
// nil the kernel holds its own references to the sockets and serves the
// device until Disconnect (or the server goes away): the caller closes
// socks and may exit, as nbd-client does on the netlink path.
func Connect(cfg Config, socks []*os.File) error {
	fds := make([]int, len(socks))
	for i, s := range socks {
		fds[i] = int(s.Fd())
	}
	err := nbdRequest(cmdConnect, connectAttrs(&cfg, fds))
	runtime.KeepAlive(socks) // the fds must stay open until the kernel has taken them
	if err != nil {
		return connectError(cfg.Index, err)
	}
	return nil
}

// connectError explains the errnos nbd_genl_connect returns.
func connectError(index int, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: /dev/nbd%d (NBD_CMD_CONNECT: %v)", ErrBusy, index, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("NBD_CMD_CONNECT: %w (CAP_SYS_ADMIN is needed)", err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("NBD_CMD_CONNECT: the kernel rejected the configuration: %w (see dmesg)", err)
	}
	return fmt.Errorf("NBD_CMD_CONNECT: %w", err)
}

// Disconnect asks the kernel to disconnect /dev/nbd<index> with
// NBD_CMD_DISCONNECT: it sends NBD_CMD_DISC to the server, shuts the
// sockets down and releases the device. It works for devices attached
// through either interface.
func Disconnect(index int) error {
	if err := nbdRequest(cmdDisconnect, attrs(nil).u32(attrIndex, uint32(index))); err != nil {
		return fmt.Errorf("NBD_CMD_DISCONNECT /dev/nbd%d: %w", index, err)
	}
	return nil
}
