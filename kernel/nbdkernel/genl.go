package nbdkernel

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/nbdd/nbdd/protocol"
	"golang.org/x/sys/unix"
)

// Generic netlink interface of the nbd module, from
// include/uapi/linux/nbd-netlink.h. Attribute payload types follow the
// kernel's nbd_attr_policy (drivers/block/nbd.c): INDEX is a u32, the sizes,
// timeout and flags are u64, SOCKETS nests SOCK_ITEMs that each hold a
// u32 SOCK_FD.
const (
	familyName  = "nbd" // NBD_GENL_FAMILY_NAME
	genlVersion = 1     // NBD_GENL_VERSION

	cmdConnect    = 1 // NBD_CMD_CONNECT
	cmdDisconnect = 2 // NBD_CMD_DISCONNECT

	attrIndex          = 1 // NBD_ATTR_INDEX
	attrSizeBytes      = 2 // NBD_ATTR_SIZE_BYTES
	attrBlockSizeBytes = 3 // NBD_ATTR_BLOCK_SIZE_BYTES
	attrTimeout        = 4 // NBD_ATTR_TIMEOUT (seconds)
	attrServerFlags    = 5 // NBD_ATTR_SERVER_FLAGS
	attrSockets        = 7 // NBD_ATTR_SOCKETS

	sockItem = 1 // NBD_SOCK_ITEM
	sockFD   = 1 // NBD_SOCK_FD
)

// ctrlVersion is the version nbd-client and libnl send to the generic
// netlink controller; the controller accepts any.
const ctrlVersion = 2

// sizeofGenlmsghdr is struct genlmsghdr: cmd, version, reserved u16.
const sizeofGenlmsghdr = 4

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an
// attribute type (NLA_TYPE_MASK).
const nlaTypeMask = 0x3fff

// genlHeaderSize is struct nlmsghdr plus struct genlmsghdr.
const genlHeaderSize = unix.SizeofNlMsghdr + sizeofGenlmsghdr

// Netlink is in host byte order (include/uapi/linux/netlink.h).
var ne = binary.NativeEndian

// attrs appends netlink attributes (struct nlattr: u16 length, u16 type,
// payload padded to 4 bytes) to a message under construction.
type attrs []byte

func (a attrs) u32(typ uint16, v uint32) attrs {
	return a.raw(typ, ne.AppendUint32(nil, v))
}

func (a attrs) u64(typ uint16, v uint64) attrs {
	return a.raw(typ, ne.AppendUint64(nil, v))
}

// str appends a NUL-terminated string (NLA_NUL_STRING, NLA_STRING).
func (a attrs) str(typ uint16, s string) attrs {
	return a.raw(typ, append([]byte(s), 0))
}

func (a attrs) raw(typ uint16, payload []byte) attrs {
	a = ne.AppendUint16(a, uint16(unix.SizeofNlAttr+len(payload)))
	a = ne.AppendUint16(a, typ)
	a = append(a, payload...)
	return pad(a)
}

// nested appends an attribute of type typ|NLA_F_NESTED holding what fill
// appends. The kernel masks NLA_F_NESTED off the type; the flag is what
// include/uapi/linux/netlink.h asks of new senders.
func (a attrs) nested(typ uint16, fill func(attrs) attrs) attrs {
	start := len(a)
	a = append(a, 0, 0, 0, 0)
	a = fill(a)
	ne.PutUint16(a[start:], uint16(len(a)-start))
	ne.PutUint16(a[start+2:], typ|unix.NLA_F_NESTED)
	return a
}

func pad(b []byte) []byte {
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// genlMessage frames a generic netlink request: struct nlmsghdr (length,
// type = the family id, flags, sequence, port 0 = the kernel) and struct
// genlmsghdr (command, version, reserved), then the attributes.
func genlMessage(family uint16, seq uint32, cmd, version uint8, a attrs) []byte {
	b := make([]byte, 0, genlHeaderSize+len(a))
	b = ne.AppendUint32(b, uint32(genlHeaderSize+len(a)))
	b = ne.AppendUint16(b, family)
	b = ne.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = append(b, cmd, version, 0, 0)
	return append(b, a...)
}

// Config is what the kernel needs to run an attached device.
type Config struct {
	// Index is N of /dev/nbdN.
	Index int
	// Size is the export size in bytes.
	Size uint64
	// BlockSize is the logical block size: a power of two from 512 to
	// 4096 (the kernel's blk_validate_block_size bounds it by the page
	// size).
	BlockSize uint32
	// Flags are the export's transmission flags. The kernel uses them to
	// decide on FLUSH, FUA, TRIM, WRITE_ZEROES, read-only and multi-conn.
	Flags protocol.TransmissionFlag
	// Timeout is the per-request timeout, rounded up to whole seconds.
	// Zero leaves the kernel default: with one connection, a stuck request
	// is logged and waited for; with several, the block layer's 30 s
	// request timeout marks the connection dead and the request goes to
	// another, and I/O fails with EIO once all are dead.
	Timeout time.Duration
}

// timeoutSeconds rounds t up to whole seconds, as the kernel takes them.
func (c *Config) timeoutSeconds() uint64 {
	return uint64((c.Timeout + time.Second - 1) / time.Second)
}

// connectAttrs are the attributes of NBD_CMD_CONNECT for sockets fds.
func connectAttrs(c *Config, fds []int) attrs {
	a := attrs(nil).
		u32(attrIndex, uint32(c.Index)).
		u64(attrSizeBytes, c.Size).
		u64(attrBlockSizeBytes, uint64(c.BlockSize)).
		u64(attrServerFlags, uint64(c.Flags))
	if s := c.timeoutSeconds(); s > 0 {
		a = a.u64(attrTimeout, s)
	}
	return a.nested(attrSockets, func(a attrs) attrs {
		for _, fd := range fds {
			a = a.nested(sockItem, func(a attrs) attrs { return a.u32(sockFD, uint32(fd)) })
		}
		return a
	})
}

// netlinkMessage is one message of a netlink reply.
type netlinkMessage struct {
	typ     uint16
	seq     uint32
	payload []byte
}

// parseMessages splits a datagram read from a netlink socket.
func parseMessages(b []byte) ([]netlinkMessage, error) {
	var msgs []netlinkMessage
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return nil, fmt.Errorf("netlink: %d trailing bytes", len(b))
		}
		m := netlinkMessage{typ: ne.Uint16(b[4:]), seq: ne.Uint32(b[8:])}
		var err error
		if m.payload, b, err = splitTLV(b, int(ne.Uint32(b)), unix.SizeofNlMsghdr); err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// parseAttrs indexes the top-level attributes in b by type (flags masked).
func parseAttrs(b []byte) (map[uint16][]byte, error) {
	m := make(map[uint16][]byte)
	for len(b) > 0 {
		if len(b) < unix.SizeofNlAttr {
			return nil, fmt.Errorf("netlink: %d trailing attribute bytes", len(b))
		}
		typ := ne.Uint16(b[2:]) & nlaTypeMask
		var err error
		if m[typ], b, err = splitTLV(b, int(ne.Uint16(b)), unix.SizeofNlAttr); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// splitTLV cuts a netlink message or attribute of total length n, header
// included, off the front of b. Both are padded to 4 bytes
// (NLMSG_ALIGNTO and NLA_ALIGNTO); the last one may lack its padding.
func splitTLV(b []byte, n, hdr int) (payload, rest []byte, err error) {
	if n < hdr || n > len(b) {
		return nil, nil, fmt.Errorf("netlink: length %d in %d bytes", n, len(b))
	}
	return b[hdr:n], b[min(len(b), (n+3)&^3):], nil
}
