package nbdkernel

import (
	"encoding/binary"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// requireLittleEndian skips golden-byte tests on big-endian hosts: netlink
// is in host byte order and the literals below are little-endian.
func requireLittleEndian(t *testing.T) {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("golden bytes are little-endian")
	}
}

func TestConnectMessageGolden(t *testing.T) {
	requireLittleEndian(t)
	cfg := Config{Index: 1, Size: 1 << 30, BlockSize: 512, Timeout: 1500 * time.Millisecond,
		Flags: protocol.FlagHasFlags | protocol.FlagSendFlush | protocol.FlagCanMultiConn}
	got := genlMessage(0x1d, 7, cmdConnect, genlVersion, connectAttrs(&cfg, []int{3, 4}))
	want := "" +
		"\x68\x00\x00\x00" + "\x1d\x00" + "\x05\x00" + "\x07\x00\x00\x00" + "\x00\x00\x00\x00" + // nlmsghdr: len 104, family, REQUEST|ACK, seq, port
		"\x01\x01\x00\x00" + // genlmsghdr: NBD_CMD_CONNECT, version 1
		"\x08\x00\x01\x00" + "\x01\x00\x00\x00" + // NBD_ATTR_INDEX u32 1
		"\x0c\x00\x02\x00" + "\x00\x00\x00\x40\x00\x00\x00\x00" + // NBD_ATTR_SIZE_BYTES u64 1 GiB
		"\x0c\x00\x03\x00" + "\x00\x02\x00\x00\x00\x00\x00\x00" + // NBD_ATTR_BLOCK_SIZE_BYTES u64 512
		"\x0c\x00\x05\x00" + "\x05\x01\x00\x00\x00\x00\x00\x00" + // NBD_ATTR_SERVER_FLAGS u64 0x105
		"\x0c\x00\x04\x00" + "\x02\x00\x00\x00\x00\x00\x00\x00" + // NBD_ATTR_TIMEOUT u64 2 (1.5 s rounded up)
		"\x1c\x00\x07\x80" + // NBD_ATTR_SOCKETS|NLA_F_NESTED, 28 bytes
		"\x0c\x00\x01\x80" + "\x08\x00\x01\x00" + "\x03\x00\x00\x00" + // NBD_SOCK_ITEM { NBD_SOCK_FD 3 }
		"\x0c\x00\x01\x80" + "\x08\x00\x01\x00" + "\x04\x00\x00\x00" // NBD_SOCK_ITEM { NBD_SOCK_FD 4 }
	require.Equal(t, []byte(want), got)
}

func TestConnectAttrsWithoutTimeout(t *testing.T) {
	a, err := parseAttrs(connectAttrs(&Config{Index: 3, Size: 4096, BlockSize: 4096}, []int{9}))
	require.NoError(t, err)
	require.NotContains(t, a, uint16(attrTimeout), "a zero timeout leaves the kernel default")
	require.Equal(t, uint32(3), ne.Uint32(a[attrIndex]))
	require.Equal(t, uint64(4096), ne.Uint64(a[attrBlockSizeBytes]))
	items, err := parseAttrs(a[attrSockets])
	require.NoError(t, err)
	fd, err := parseAttrs(items[sockItem])
	require.NoError(t, err)
	require.Equal(t, uint32(9), ne.Uint32(fd[sockFD]))
}

func TestDisconnectAndFamilyMessagesGolden(t *testing.T) {
	requireLittleEndian(t)
	got := genlMessage(0x1d, 1, cmdDisconnect, genlVersion, attrs(nil).u32(attrIndex, 5))
	want := "\x1c\x00\x00\x00\x1d\x00\x05\x00\x01\x00\x00\x00\x00\x00\x00\x00" +
		"\x02\x01\x00\x00" +
		"\x08\x00\x01\x00\x05\x00\x00\x00"
	require.Equal(t, []byte(want), got)

	got = genlMessage(unix.GENL_ID_CTRL, 2, unix.CTRL_CMD_GETFAMILY, ctrlVersion, attrs(nil).str(unix.CTRL_ATTR_FAMILY_NAME, familyName))
	want = "\x1c\x00\x00\x00\x10\x00\x05\x00\x02\x00\x00\x00\x00\x00\x00\x00" +
		"\x03\x02\x00\x00" +
		"\x08\x00\x02\x00nbd\x00"
	require.Equal(t, []byte(want), got)
}

func TestAttrPadding(t *testing.T) {
	requireLittleEndian(t)
	got := attrs(nil).str(9, "nbd2").u32(1, 7)
	// 4 + 5 payload bytes = length 9, padded to 12; the next attribute
	// starts aligned.
	require.Equal(t, []byte("\x09\x00\x09\x00nbd2\x00\x00\x00\x00"+"\x08\x00\x01\x00\x07\x00\x00\x00"), []byte(got))
	a, err := parseAttrs(got)
	require.NoError(t, err)
	require.Equal(t, "nbd2\x00", string(a[9]))
	require.Equal(t, uint32(7), ne.Uint32(a[1]))
}

func TestParseMessages(t *testing.T) {
	// A CTRL_CMD_NEWFAMILY-style reply followed by an ACK (NLMSG_ERROR 0),
	// then an NLMSG_ERROR carrying -EBUSY.
	reply := genlMessage(0x10, 4, 1, 2, attrs(nil).str(unix.CTRL_ATTR_FAMILY_NAME, "nbd").raw(unix.CTRL_ATTR_FAMILY_ID, ne.AppendUint16(nil, 0x1d)))
	ack := nlError(4, 0)
	busy := nlError(5, -int32(syscall.EBUSY))
	msgs, err := parseMessages(append(append(reply, ack...), busy...))
	require.NoError(t, err)
	require.Len(t, msgs, 3)
	require.Equal(t, uint16(0x10), msgs[0].typ)
	a, err := parseAttrs(msgs[0].payload[sizeofGenlmsghdr:])
	require.NoError(t, err)
	require.Equal(t, uint16(0x1d), ne.Uint16(a[unix.CTRL_ATTR_FAMILY_ID]))
	require.Equal(t, uint16(unix.NLMSG_ERROR), msgs[1].typ)
	require.Equal(t, uint32(4), msgs[1].seq)
	require.Equal(t, int32(0), int32(ne.Uint32(msgs[1].payload)))
	require.Equal(t, -int32(syscall.EBUSY), int32(ne.Uint32(msgs[2].payload)))
}

// nlError builds an NLMSG_ERROR message: the errno and (truncated) the
// request's header.
func nlError(seq uint32, errno int32) []byte {
	b := ne.AppendUint32(nil, unix.SizeofNlMsghdr+4+unix.SizeofNlMsghdr)
	b = ne.AppendUint16(b, unix.NLMSG_ERROR)
	b = ne.AppendUint16(b, 0)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = ne.AppendUint32(b, uint32(errno))
	return append(b, make([]byte, unix.SizeofNlMsghdr)...)
}

func TestParseMalformed(t *testing.T) {
	for name, b := range map[string][]byte{
		"short header":      {1, 2, 3},
		"length too small":  append(ne.AppendUint32(nil, 8), make([]byte, 12)...),
		"length past end":   append(ne.AppendUint32(nil, 64), make([]byte, 12)...),
		"zero length":       make([]byte, 16),
		"second is partial": append(nlError(1, 0), 1, 0, 0),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseMessages(b)
			require.Error(t, err)
		})
	}
	for name, b := range map[string][]byte{
		"short":          {4, 0},
		"length 2":       {2, 0, 1, 0},
		"length too big": {12, 0, 1, 0, 0, 0, 0, 0},
	} {
		t.Run("attr "+name, func(t *testing.T) {
			_, err := parseAttrs(b)
			require.Error(t, err)
		})
	}
}

func TestTimeoutSeconds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want uint64
	}{{0, 0}, {time.Nanosecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {2 * time.Minute, 120}} {
		c := Config{Timeout: tc.d}
		require.Equal(t, tc.want, c.timeoutSeconds(), "timeout %v", tc.d)
	}
}

func TestSetupSteps(t *testing.T) {
	cfg := Config{Size: 1 << 30, BlockSize: 4096, Flags: protocol.FlagHasFlags | protocol.FlagSendFlush}
	names := func(steps []ioctlStep) (n []string) {
		for _, s := range steps {
			n = append(n, s.name)
		}
		return n
	}
	steps := setupSteps(&cfg)
	require.Equal(t, []string{"NBD_SET_BLKSIZE", "NBD_SET_SIZE", "NBD_SET_FLAGS"}, names(steps), "the block size goes first")
	require.Equal(t, []uintptr{4096, 1 << 30, 5}, []uintptr{steps[0].arg, steps[1].arg, steps[2].arg})
	cfg.Timeout = 30 * time.Second
	steps = setupSteps(&cfg)
	require.Equal(t, ioctlStep{"NBD_SET_TIMEOUT", ioctlSetTimeout, 30}, steps[len(steps)-1])
}
