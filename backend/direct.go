//go:build linux

package backend

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment of offsets, lengths and buffers that
// O_DIRECT needs on 512-byte-sector devices and the filesystems on them.
const directAlign = 512

// OpenFileDirect opens the image or block device at path like OpenFile,
// but with O_DIRECT, so that reads and writes bypass the page cache (for
// example to keep a large image from evicting everything else). The size
// must be a multiple of 512 bytes. Requests must be aligned to 512 bytes in
// offset and length, as MinBlockSize tells the server to advertise in
// NBD_INFO_BLOCK_SIZE; unaligned ones fail with EINVAL. Buffers need no
// alignment: unaligned ones are bounced through an aligned copy.
func OpenFileDirect(path string, readOnly bool) (*File, error) {
	f, err := openFile(path, readOnly, unix.O_DIRECT)
	if err != nil {
		return nil, err
	}
	if f.size%directAlign != 0 {
		f.Close()
		return nil, fmt.Errorf("O_DIRECT backend %s: size %d is not a multiple of %d", path, f.size, directAlign)
	}
	f.direct = true
	return f, nil
}

// MinBlockSize returns 512 for a File opened with OpenFileDirect and 1
// otherwise.
func (f *File) MinBlockSize() uint32 {
	if f.direct {
		return directAlign
	}
	return 1
}

// directBuf checks that a request suits O_DIRECT and returns the buffer to
// pass to the kernel: p itself if it is aligned, otherwise a new aligned
// buffer of the same length.
func directBuf(p []byte, off int64) ([]byte, error) {
	if off%directAlign != 0 || len(p)%directAlign != 0 {
		return nil, fmt.Errorf("O_DIRECT request of %d bytes at offset %d is not %d-byte aligned: %w",
			len(p), off, directAlign, syscall.EINVAL)
	}
	if len(p) == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0 {
		return p, nil
	}
	b := make([]byte, len(p)+directAlign)
	k := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (directAlign - 1))
	return b[k : k+len(p) : k+len(p)], nil
}

// pread reads with os.File.ReadAt, bouncing through an aligned buffer for
// O_DIRECT when p is not aligned.
func (f *File) pread(p []byte, off int64) (int, error) {
	if !f.direct {
		return f.f.ReadAt(p, off)
	}
	buf, err := directBuf(p, off)
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
// for O_DIRECT when p is not aligned.
func (f *File) pwrite(p []byte, off int64) (int, error) {
	if !f.direct {
		return f.f.WriteAt(p, off)
	}
	buf, err := directBuf(p, off)
	if err != nil {
		return 0, err
	}
	if len(p) > 0 && &buf[0] != &p[0] {
		copy(buf, p)
	}
	return f.f.WriteAt(buf, off)
}
