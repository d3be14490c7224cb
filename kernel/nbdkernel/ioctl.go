package nbdkernel

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ioctl requests of the nbd block device, from include/uapi/linux/nbd.h:
// _IO(0xab, n).
const (
	ioctlSetSock    = 0xab00 // NBD_SET_SOCK
	ioctlSetBlksize = 0xab01 // NBD_SET_BLKSIZE
	ioctlSetSize    = 0xab02 // NBD_SET_SIZE (bytes)
	ioctlDoIt       = 0xab03 // NBD_DO_IT
	ioctlClearSock  = 0xab04 // NBD_CLEAR_SOCK
	ioctlClearQue   = 0xab05 // NBD_CLEAR_QUE
	ioctlDisconnect = 0xab08 // NBD_DISCONNECT
	ioctlSetTimeout = 0xab09 // NBD_SET_TIMEOUT (seconds)
	ioctlSetFlags   = 0xab0a // NBD_SET_FLAGS
)

func ioctl(dev *os.File, req, arg uintptr) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, dev.Fd(), req, arg)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// Serve attaches dev to the connections socks with the ioctl interface and
// serves it: it returns only when the device is disconnected (Disconnect,
// DisconnectIoctl, or the server closing the connections), because the
// kernel runs the device inside NBD_DO_IT. Serve closes nothing; the caller
// keeps socks open until it returns.
//
// All the ioctls run on one locked OS thread with every signal blocked.
// The kernel accepts NBD_SET_SOCK only from the task (thread) that issued
// the first one ("Device being setup by another task"), which is why a
// goroutine that migrates between threads, as go-nbd's client does, cannot
// add a second connection. And NBD_DO_IT waits interruptibly: a signal
// delivered to its thread would shut the sockets down. The thread is never
// unlocked, so the runtime discards it when Serve returns.
func Serve(dev *os.File, cfg Config, socks []*os.File) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread exits with this goroutine
		done <- serveLocked(dev, &cfg, socks)
	}()
	return <-done
}

func serveLocked(dev *os.File, cfg *Config, socks []*os.File) error {
	all := unix.Sigset_t{}
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, nil); err != nil {
		return fmt.Errorf("block signals: %w", err)
	}
	for _, s := range setupSteps(cfg) {
		if err := ioctl(dev, s.req, s.arg); err != nil {
			return ioctlError(dev, s.name, err)
		}
	}
	for i, s := range socks {
		if err := ioctl(dev, ioctlSetSock, s.Fd()); err != nil {
			ioctl(dev, ioctlClearSock, 0)
			return ioctlError(dev, fmt.Sprintf("NBD_SET_SOCK (connection %d)", i+1), err)
		}
	}
	err := ioctl(dev, ioctlDoIt, 0)
	// As nbd-client: whatever ended NBD_DO_IT, leave the device clean.
	ioctl(dev, ioctlClearQue, 0)
	ioctl(dev, ioctlClearSock, 0)
	runtime.KeepAlive(socks)
	if err != nil {
		return fmt.Errorf("NBD_DO_IT %s: %w", dev.Name(), err)
	}
	return nil
}

type ioctlStep struct {
	name     string
	req, arg uintptr
}

// setupSteps are the ioctls before NBD_SET_SOCK, in nbd-client's order: the
// block size first, since NBD_SET_SIZE is kept in whole blocks.
func setupSteps(cfg *Config) []ioctlStep {
	steps := []ioctlStep{
		{"NBD_SET_BLKSIZE", ioctlSetBlksize, uintptr(cfg.BlockSize)},
		{"NBD_SET_SIZE", ioctlSetSize, uintptr(cfg.Size)},
		{"NBD_SET_FLAGS", ioctlSetFlags, uintptr(cfg.Flags)},
	}
	if s := cfg.timeoutSeconds(); s > 0 {
		steps = append(steps, ioctlStep{"NBD_SET_TIMEOUT", ioctlSetTimeout, uintptr(s)})
	}
	return steps
}

// ioctlError explains the errnos of the setup ioctls.
func ioctlError(dev *os.File, name string, err error) error {
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%w: %s (%s: %v)", ErrBusy, dev.Name(), name, err)
	}
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%s %s: %w (a device attached through netlink refuses the ioctl interface; see dmesg)", name, dev.Name(), err)
	}
	return fmt.Errorf("%s %s: %w", name, dev.Name(), err)
}

// DisconnectIoctl disconnects dev with NBD_DISCONNECT and NBD_CLEAR_SOCK,
// as `nbd-client -d` does on the ioctl path. The process blocked in Serve
// for the device then returns.
func DisconnectIoctl(dev *os.File) error {
	if err := ioctl(dev, ioctlDisconnect, 0); err != nil {
		return fmt.Errorf("NBD_DISCONNECT %s: %w", dev.Name(), err)
	}
	if err := ioctl(dev, ioctlClearSock, 0); err != nil {
		return fmt.Errorf("NBD_CLEAR_SOCK %s: %w", dev.Name(), err)
	}
	return nil
}
