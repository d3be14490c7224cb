package nbdkernel

import (
	"fmt"
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

// TestLimitRequestSize: the device's max_sectors_kb is lowered to the
// server's maximum payload, never raised.
func TestLimitRequestSize(t *testing.T) {
	for _, tc := range []struct {
		cur  string
		max  uint32
		want string
		bad  bool
	}{
		{"1280\n", 64 << 10, "64", false},
		{"1280\n", 32 << 20, "1280\n", false},
		{"32\n", 64 << 10, "32\n", false},
		{"1280\n", 1 << 20, "1024", false},
		{"1280\n", 1000, "1280\n", true},
	} {
		t.Run(fmt.Sprint(tc.max), func(t *testing.T) {
			queue := filepath.Join(fakeSys(t), "block", "nbd3", "queue")
			require.NoError(t, os.MkdirAll(queue, 0o755))
			file := filepath.Join(queue, "max_sectors_kb")
			require.NoError(t, os.WriteFile(file, []byte(tc.cur), 0o644))
			err := Device{Index: 3}.LimitRequestSize(tc.max)
			got, _ := os.ReadFile(file)
			if (err != nil) != tc.bad || string(got) != tc.want {
				t.Errorf("max_sectors_kb %q, server max %d: got %q, %v; want %q (error %v)", tc.cur, tc.max, got, err, tc.want, tc.bad)
			}
		})
	}
}
