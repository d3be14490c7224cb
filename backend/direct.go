//go:build linux

package backend

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// defaultDirectAlign is the O_DIRECT alignment assumed where the kernel
// does not tell (statx STATX_DIOALIGN, Linux 6.1, and BLKSSZGET for block
// devices): right for 512-byte-sector devices and the filesystems on them.
const defaultDirectAlign = 512

// OpenFileDirect opens the image or block device at path like OpenFile,
// but with O_DIRECT, so that reads and writes bypass the page cache (for
// example to keep a large image from evicting everything else). Requests
// must be aligned in offset and length to what the file's filesystem or
// device needs for O_DIRECT (statx STATX_DIOALIGN: 512 bytes on most
// disks, 4096 on 4Kn ones), as MinBlockSize tells the server to advertise
// in NBD_INFO_BLOCK_SIZE; unaligned ones fail with EINVAL. The size must
// be a multiple of it. Buffers need no alignment: unaligned ones are
// bounced through an aligned copy.
func OpenFileDirect(path string, readOnly bool) (*File, error) {
	f, err := openFile(path, readOnly, unix.O_DIRECT)
	if err != nil {
		return nil, err
	}
	f.align = directAlign(f)
	if f.size%f.align != 0 {
		f.Close()
		return nil, fmt.Errorf("O_DIRECT backend %s: size %d is not a multiple of %d", path, f.size, f.align)
	}
	f.direct = true
	return f, nil
}

// directAlign returns the alignment O_DIRECT needs for f's offsets,
// lengths and buffers: what statx reports, else a block device's logical
// block size, else defaultDirectAlign.
func directAlign(f *File) int64 {
	var align int64
	_ = f.control(func(fd int) error {
		var st unix.Statx_t
		if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st) == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
			align = int64(max(st.Dio_offset_align, st.Dio_mem_align))
		}
		if align == 0 && f.blockDev {
			if n, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil {
				align = int64(n)
			}
		}
		return nil
	})
	if align <= 0 || align&(align-1) != 0 {
		return defaultDirectAlign
	}
	return align
}

// MinBlockSize returns the O_DIRECT alignment for a File opened with
// OpenFileDirect and 1 otherwise.
func (f *File) MinBlockSize() uint32 {
	if f.direct {
		return uint32(f.align)
	}
	return 1
}

// directBuf checks that a request suits O_DIRECT and returns the buffer to
// pass to the kernel: p itself if it is aligned, otherwise a new aligned
// buffer of the same length.
func (f *File) directBuf(p []byte, off int64) ([]byte, error) {
	align := f.align
	if off%align != 0 || int64(len(p))%align != 0 {
		return nil, fmt.Errorf("O_DIRECT request of %d bytes at offset %d is not %d-byte aligned: %w",
			len(p), off, align, syscall.EINVAL)
	}
	if len(p) == 0 || int64(uintptr(unsafe.Pointer(unsafe.SliceData(p))))%align == 0 {
		return p, nil
	}
	b := make([]byte, int64(len(p))+align)
	k := int(int64(-uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & (align - 1))
	return b[k : k+len(p) : k+len(p)], nil
}

// pread reads with os.File.ReadAt, bouncing through an aligned buffer for
// O_DIRECT when p is not aligned; a file in memory reads with a raw
// pread (rawio.go).
func (f *File) pread(p []byte, off int64) (int, error) {
	switch {
	case f.inMemory && !f.direct && !raceEnabled:
		return rawTransfer(f, false, p, off)
	case !f.direct:
		return f.f.ReadAt(p, off)
	}
	buf, err := f.directBuf(p, off)
	if err != nil {
		return 0, err
	}
	n, err := f.f.ReadAt(buf, off)
	if len(p) > 0 && &buf[0] != &p[0] {
		copy(p, buf[:n])
	}
	return n, err
}

// pwrite writes with os.File.WriteAt, bouncing through an aligned buffer
// for O_DIRECT when p is not aligned; a file in memory writes with a raw
// pwrite (rawio.go).
func (f *File) pwrite(p []byte, off int64) (int, error) {
	switch {
	case f.inMemory && !f.direct && !raceEnabled:
		return rawTransfer(f, true, p, off)
	case !f.direct:
		return f.f.WriteAt(p, off)
	}
	buf, err := f.directBuf(p, off)
	if err != nil {
		return 0, err
	}
	if len(p) > 0 && &buf[0] != &p[0] {
		copy(buf, p)
	}
	return f.f.WriteAt(buf, off)
}
