package nbdkernel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// nbdMajor is the block major of NBD devices (NBD_MAJOR, include/linux/major.h).
const nbdMajor = 43

// Errors about the kernel side. Each is wrapped with the details.
var (
	// ErrNoModule means the nbd module is not loaded: no device node, or
	// no generic netlink family "nbd".
	ErrNoModule = errors.New("nbd module not loaded")
	// ErrBusy means the device is attached, or being set up or held open
	// by another process (the kernel says EBUSY for all three).
	ErrBusy = errors.New("device busy: attached, or being set up or held open by another process")
	// ErrNotAttached means a detach found the device idle.
	ErrNotAttached = errors.New("device not attached")
)

// sysRoot is where sysfs is mounted; tests point it at a directory.
var sysRoot = "/sys"

// Device is an NBD device node, /dev/nbdN.
type Device struct {
	// Path is the node as the user named it.
	Path string
	// Index is N.
	Index int
}

var nbdName = regexp.MustCompile(`^nbd([0-9]+)$`)

// FindDevice checks that path is a whole NBD device and returns it. A
// missing node is explained: either the nbd module is not loaded
// (ErrNoModule) or it has fewer devices (its nbds_max parameter).
func FindDevice(path string) (Device, error) {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return Device{}, missingDevice(path)
	}
	if err != nil {
		return Device{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Device{}, fmt.Errorf("%s is not a block device", path)
	}
	if maj := unix.Major(st.Rdev); maj != nbdMajor {
		return Device{}, fmt.Errorf("%s is not an NBD device (block major %d, want %d)", path, maj, nbdMajor)
	}
	name, err := sysfsName(unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if err != nil {
		// No sysfs (a container?): fall back to the node's own name.
		real, _ := filepath.EvalSymlinks(path)
		name = filepath.Base(real)
	}
	m := nbdName.FindStringSubmatch(name)
	if m == nil {
		return Device{}, fmt.Errorf("%s (%s) is not a whole NBD device; partitions cannot be attached", path, name)
	}
	idx, err := strconv.Atoi(m[1])
	if err != nil {
		return Device{}, fmt.Errorf("%s: device index %q: %w", path, m[1], err)
	}
	return Device{Path: path, Index: idx}, nil
}

// sysfsName is the kernel's name for a block device number: the target of
// /sys/dev/block/MAJ:MIN ends in it.
func sysfsName(major, minor uint32) (string, error) {
	target, err := os.Readlink(filepath.Join(sysRoot, "dev", "block", fmt.Sprintf("%d:%d", major, minor)))
	if err != nil {
		return "", err
	}
	return filepath.Base(target), nil
}

func missingDevice(path string) error {
	if _, err := os.Stat(filepath.Join(sysRoot, "module", "nbd")); err != nil {
		return fmt.Errorf("%w: %s does not exist (modprobe nbd)", ErrNoModule, path)
	}
	n, err := os.ReadFile(filepath.Join(sysRoot, "module", "nbd", "parameters", "nbds_max"))
	if err != nil {
		return fmt.Errorf("%s does not exist", path)
	}
	return fmt.Errorf("%s does not exist (the nbd module was loaded with nbds_max=%s)", path, strings.TrimSpace(string(n)))
}

// Size is the device's current size in bytes from sysfs: 0 when it is not
// attached.
func (d Device) Size() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(sysRoot, "block", "nbd"+strconv.Itoa(d.Index), "size"))
	if err != nil {
		return 0, err
	}
	sectors, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: size %q: %w", d.Path, b, err)
	}
	return sectors * 512, nil
}

// LimitRequestSize caps the requests the kernel sends to the device at
// max bytes, through queue/max_sectors_kb, before it is attached. A client
// that asked for the server's block size constraints must keep to its
// maximum payload (proto.md "Size constraints"), and the kernel would
// otherwise send up to max_sectors_kb (1280 KiB by default on 6.x, and up
// to 32 MiB if raised). A limit already lower is kept.
func (d Device) LimitRequestSize(max uint32) error {
	kb := uint64(max) / 1024
	if kb < 4 {
		return fmt.Errorf("the server's maximum request of %d bytes is below a page", max)
	}
	path := filepath.Join(sysRoot, "block", "nbd"+strconv.Itoa(d.Index), "queue", "max_sectors_kb")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if cur, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && cur <= kb {
		return nil
	}
	return os.WriteFile(path, []byte(strconv.FormatUint(kb, 10)), 0)
}
