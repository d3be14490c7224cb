package nbdkernel

import (
	"github.com/nbdd/nbdd/internal/testenv"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeSys points sysRoot at a temporary directory for one test.
func fakeSys(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	old := sysRoot
	sysRoot = dir
	t.Cleanup(func() { sysRoot = old })
	return dir
}

func TestFindDeviceMissing(t *testing.T) {
	sys := fakeSys(t)
	dev := filepath.Join(t.TempDir(), "nbd7")

	_, err := FindDevice(dev)
	require.ErrorIs(t, err, ErrNoModule)
	require.EqualError(t, err, "nbd module not loaded: "+dev+" does not exist (modprobe nbd)")

	require.NoError(t, os.MkdirAll(filepath.Join(sys, "module", "nbd", "parameters"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "module", "nbd", "parameters", "nbds_max"), []byte("4\n"), 0o644))
	_, err = FindDevice(dev)
	require.NotErrorIs(t, err, ErrNoModule)
	require.EqualError(t, err, dev+" does not exist (the nbd module was loaded with nbds_max=4)")
}

func TestFindDeviceNotBlock(t *testing.T) {
	fakeSys(t)
	f := filepath.Join(t.TempDir(), "nbd0")
	require.NoError(t, os.WriteFile(f, nil, 0o644))
	_, err := FindDevice(f)
	require.EqualError(t, err, f+" is not a block device")
	_, err = FindDevice("/dev/null")
	require.EqualError(t, err, "/dev/null is not a block device")
}

func TestFindDeviceOtherBlockDevice(t *testing.T) {
	// Any block device that is not NBD: the first one sysfs lists.
	links, _ := filepath.Glob("/sys/class/block/*")
	for _, l := range links {
		dev := "/dev/" + filepath.Base(l)
		if fi, err := os.Stat(dev); err != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			continue
		}
		_, err := FindDevice(dev)
		if err == nil {
			continue // an NBD device after all
		}
		require.ErrorContains(t, err, "is not an NBD device")
		return
	}
	testenv.SkipOutsideCI(t, "no block device node on this host")
}

func TestDeviceSize(t *testing.T) {
	sys := fakeSys(t)
	d := Device{Path: "/dev/nbd3", Index: 3}
	_, err := d.Size()
	require.Error(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "block", "nbd3"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "block", "nbd3", "size"), []byte("2097152\n"), 0o644))
	size, err := d.Size()
	require.NoError(t, err)
	require.Equal(t, uint64(1<<30), size)
	require.NoError(t, os.WriteFile(filepath.Join(sys, "block", "nbd3", "size"), []byte("x"), 0o644))
	_, err = d.Size()
	require.ErrorContains(t, err, `/dev/nbd3: size "x"`)
}
