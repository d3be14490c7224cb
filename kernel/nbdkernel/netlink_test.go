package nbdkernel

import (
	"errors"
	"github.com/nbdd/nbdd/internal/testenv"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The generic netlink controller is in every kernel: resolving its own
// family proves the socket, the framing and the reply parsing against the
// real thing.
func TestFamilyAgainstKernel(t *testing.T) {
	c, err := dialGenl()
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT) {
		testenv.SkipOutsideCI(t, "no generic netlink here: %v", err)
	}
	require.NoError(t, err)
	defer c.close()
	id, err := c.family("nlctrl")
	require.NoError(t, err)
	require.Equal(t, uint16(unix.GENL_ID_CTRL), id)

	_, err = c.family("nbdd-nofam") // GENL_NAMSIZ: at most 15 bytes
	require.ErrorIs(t, err, ErrNoModule)
}

func TestDisconnectWithoutModule(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("the nbd module is loaded on this host")
	}
	err := Disconnect(0)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EAFNOSUPPORT) {
		testenv.SkipOutsideCI(t, "no generic netlink here: %v", err)
	}
	require.ErrorIs(t, err, ErrNoModule)
	require.ErrorContains(t, err, `NBD_CMD_DISCONNECT /dev/nbd0: nbd module not loaded: no generic netlink family "nbd"`)
}

func TestConnectErrors(t *testing.T) {
	require.ErrorIs(t, connectError(2, unix.EBUSY), ErrBusy)
	require.ErrorContains(t, connectError(2, unix.EBUSY), "/dev/nbd2")
	require.ErrorContains(t, connectError(2, unix.EPERM), "CAP_SYS_ADMIN")
	require.ErrorContains(t, connectError(2, unix.EINVAL), "see dmesg")
	require.ErrorIs(t, connectError(2, unix.EIO), unix.EIO)
}
