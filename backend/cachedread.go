//go:build linux

package backend

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadCached implements CachedReader with preadv2(2) and RWF_NOWAIT
// (Linux 4.14), which fails with EAGAIN rather than start I/O. A short
// read (part of the range cached) counts as a miss. Files opened with
// O_DIRECT never use the page cache and always miss (with O_DIRECT,
// RWF_NOWAIT does not stop the read from going to the device), as does
// any file on a filesystem that refuses the flag, which the File then
// stops asking.
//
// The call is an ordinary system call, not a raw one as rawio.go makes
// on files in memory: RWF_NOWAIT keeps it from waiting for the data, but
// on a disk filesystem the read may still update the file's access time,
// which can wait on the journal, and a raw call would hold up the Go
// runtime meanwhile.
func (f *File) ReadCached(p []byte, off int64) bool {
	if f.direct || f.noNowait.Load() || len(p) == 0 {
		return false
	}
	if n, _ := readLimit(len(p), off, f.size); n < len(p) {
		return false
	}
	r := nowaitPool.Get().(*nowaitRead)
	r.iov = unix.Iovec{Base: unsafe.SliceData(p)}
	r.iov.SetLen(len(p))
	r.off, r.n, r.errno = off, 0, 0
	cerr := f.rc.Control(r.fn)
	n, errno := r.n, r.errno
	r.iov = unix.Iovec{}
	nowaitPool.Put(r)
	if errno == unix.EOPNOTSUPP || errno == unix.EINVAL || errno == unix.ENOSYS {
		f.noNowait.Store(true)
	}
	return cerr == nil && errno == 0 && n == len(p)
}

// nowaitRead is one preadv2 with RWF_NOWAIT; pooled, with its callback
// made once, so that a call allocates nothing.
type nowaitRead struct {
	iov   unix.Iovec
	off   int64
	n     int
	errno unix.Errno
	fn    func(fd uintptr)
}

var nowaitPool = sync.Pool{New: func() any {
	r := &nowaitRead{}
	r.fn = r.call
	return r
}}

func (r *nowaitRead) call(fd uintptr) {
	for {
		// preadv2(fd, iov, iovcnt, pos_l, pos_h, flags): on 64-bit
		// systems, the only ones nbdd builds for, the whole offset goes
		// in pos_l.
		n, _, errno := unix.Syscall6(unix.SYS_PREADV2, fd, uintptr(unsafe.Pointer(&r.iov)), 1,
			uintptr(r.off), 0, unix.RWF_NOWAIT)
		if errno == unix.EINTR {
			continue
		}
		r.n, r.errno = int(n), errno
		return
	}
}

// KnownData reports, without a system call, whether the n bytes at off
// lie inside the run of data Extents found last: a READ of them has no
// holes to report, so the server may send it with sendfile without
// asking the filesystem, whose SEEK_DATA may wait on the inode lock
// behind a write.
func (f *File) KnownData(off, n int64) bool {
	r := f.lastData.Load()
	return r != nil && r.lo <= off && off+n <= r.hi
}
