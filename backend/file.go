//go:build linux

package backend

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is a Backend on a raw image file or a block device. Reads and writes
// are pread and pwrite (os.File.ReadAt and WriteAt) with no lock, so requests
// run in parallel as the kernel allows. File implements Trimmer, FastZeroer,
// Extenter, Cacher, FUAWriter, MultiConner, ReadOnlyer and BlockSizer.
//
// The export size is read once, when the File is created: the server
// advertises it at the handshake and the export must not change size under
// a connected client.
type File struct {
	f        *os.File
	rc       syscall.RawConn
	size     int64
	readOnly bool
	direct   bool // opened with O_DIRECT: see OpenFileDirect
	inMemory bool // on tmpfs or ramfs: see NonBlocking

	// Capabilities found missing at run time, so the next request goes
	// straight to the fallback. Written with atomic stores by any request.
	noPunch     atomic.Bool
	noZeroRange atomic.Bool
	noSeekData  atomic.Bool
	noDSync     atomic.Bool
	noCachestat atomic.Bool
	noNowait    atomic.Bool

	// syncFailed is the first failed write-back (fdatasync, or the sync
	// part of an RWF_DSYNC write): see Sync.
	syncFailed atomic.Pointer[error]

	// lastData caches the last run of data found with SEEK_DATA and
	// SEEK_HOLE, as qemu's file-posix does: on tmpfs, and with the inode
	// locked, SEEK_HOLE walks the page cache up to the next hole, so a
	// lookup per READ of a 1 GiB file cost O(file size) each. Writes never
	// make a hole, so the run stays data until a fallocate clears the
	// cache; a stale run is still correct, since reporting data claims
	// nothing (see Extenter).
	lastData atomic.Pointer[dataRun]

	// writeMu, held around each buffered pwrite to a regular file, lets one
	// write at a time into the kernel. Linux filesystems (ext4, xfs,
	// btrfs, tmpfs) serialize buffered writes to a file on its inode lock
	// anyway; without writeMu, the server's concurrent WRITEs each held an
	// OS thread spinning or sleeping on that lock, where a goroutine waiting
	// on a Go mutex holds none (nbdcopy writing a file on ext4: 0.92x the
	// time, see docs/performance.md). Block devices take no such lock and
	// O_DIRECT writes to aligned ranges run in parallel, so neither uses
	// it; nor do FUA writes, whose sync runs after the kernel drops the
	// lock.
	writeMu      sync.Mutex
	serialWrites bool  // a regular file: see writeMu
	blockDev     bool  // a block device: see WriteZeroes
	align        int64 // O_DIRECT alignment (see OpenFileDirect)
}

// dataRun is a range [lo, hi) known to hold data.
type dataRun struct{ lo, hi int64 }

// OpenFile opens the image or block device at path, read-write unless
// readOnly is set.
func OpenFile(path string, readOnly bool) (*File, error) {
	return openFile(path, readOnly, 0)
}

// openFile opens path with the open flags extra added and wraps it in a
// File.
func openFile(path string, readOnly bool, extra int) (*File, error) {
	f, err := openImage(path, readOnly, extra)
	if err != nil {
		return nil, err
	}
	b, err := NewFile(f, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

// openImage opens an image file or block device, read-write unless
// readOnly is set, adding the open flags extra.
func openImage(path string, readOnly bool, extra int) (*os.File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag|extra, 0)
	if err != nil {
		return nil, fmt.Errorf("open backend image: %w", err)
	}
	return f, nil
}

// NewFile returns a File serving f, which it owns from then on: Close closes
// f. readOnly makes every write fail with ErrReadOnly even if f is writable.
func NewFile(f *os.File, readOnly bool) (*File, error) {
	size, err := fileSize(f)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", f.Name(), err)
	}
	b := &File{f: f, rc: rc, size: size, readOnly: readOnly, inMemory: inMemoryFS(f)}
	if b.openedDirect() {
		b.noNowait.Store(true) // see ReadCached
	}
	if st, err := f.Stat(); err == nil {
		b.serialWrites = st.Mode().IsRegular()
		b.blockDev = st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0
	}
	return b, nil
}

// openedDirect reports whether f's descriptor was opened with O_DIRECT
// by whoever handed it to NewFile (OpenFileDirect says so itself).
func (f *File) openedDirect() bool {
	var fl int
	err := f.control(func(fd int) (err error) {
		fl, err = unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		return err
	})
	return err == nil && fl&unix.O_DIRECT != 0
}

// inMemoryFS reports whether f is on a filesystem that keeps its data in
// memory only (tmpfs, ramfs), where reads and writes never wait on a
// device.
func inMemoryFS(f *os.File) bool {
	var st unix.Statfs_t
	if unix.Fstatfs(int(f.Fd()), &st) != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

// fileSize returns the size of a regular file, or of a block device, whose
// Stat size is 0, by seeking to its end (the kernel answers from the
// device's capacity, as BLKGETSIZE64 does).
func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("backend size: %w", err)
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return 0, fmt.Errorf("backend %s: not a regular file or block device (%v)", f.Name(), fi.Mode().Type())
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("backend %s size: %w", f.Name(), err)
	}
	return size, nil
}

// File returns the underlying file, for zero-copy replies (sendfile with an
// explicit offset). The caller must not close it or use its file offset,
// which Extents moves.
func (f *File) File() *os.File { return f.f }

// Cached reports whether all n bytes at off are in the page cache, so
// that reading them (with sendfile, say) waits on no device and meets no
// bad sector. It is always true for a file in memory (tmpfs, ramfs),
// false with O_DIRECT, and otherwise asks cachestat(2) (Linux 6.5), false
// where that is missing. Pages may be evicted right after the answer: it
// is a hint for choosing a path, not a promise.
func (f *File) Cached(off, n int64) bool {
	switch {
	case f.direct || n <= 0:
		return false
	case f.inMemory:
		return true
	case f.noCachestat.Load():
		return false
	}
	page := int64(os.Getpagesize())
	roundUp := func(x int64) int64 { return (x + page - 1) / page * page }
	first, end := off/page*page, min(roundUp(off+n), roundUp(f.size))
	r := unix.CachestatRange{Off: uint64(first), Len: uint64(end - first)}
	var st unix.Cachestat_t
	err := f.control(func(fd int) error { return unix.Cachestat(uint(fd), &r, &st, 0) })
	if errors.Is(err, unix.ENOSYS) {
		f.noCachestat.Store(true)
	}
	return err == nil && int64(st.Cache) == (end-first)/page
}

// Close closes the file. Requests must not be in flight.
func (f *File) Close() error { return f.f.Close() }

// Size returns the size the file had when the File was created.
func (f *File) Size() (int64, error) { return f.size, nil }

// ReadOnly reports whether writes are refused.
func (f *File) ReadOnly() bool { return f.readOnly }

// CanMultiConn reports true: all connections share one kernel page cache,
// so fdatasync on one covers writes completed on another.
func (f *File) CanMultiConn() bool { return true }

// CanFastZero reports true; WriteZeroes returns ErrNotFast when the
// filesystem cannot zero with fallocate.
func (f *File) CanFastZero() bool { return true }

// control runs fn on the file descriptor, keeping the file open meanwhile.
func (f *File) control(fn func(fd int) error) error {
	var err error
	if cerr := f.rc.Control(func(fd uintptr) { err = fn(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}

// ReadAt reads with pread. A read running past the end is cut short with an
// error matching both ErrOutOfRange and io.EOF.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	n, rerr := readLimit(len(p), off, f.size)
	if n == 0 {
		return 0, rerr
	}
	got, err := f.pread(p[:n], off)
	if err != nil {
		return got, fmt.Errorf("read backend: %w", err)
	}
	return got, rerr
}

// checkWrite is the range and permission check shared by every write.
func (f *File) checkWrite(op string, off, length int64) error {
	if f.readOnly {
		return fmt.Errorf("%s: %w", op, ErrReadOnly)
	}
	return checkRange(op, off, length, f.size)
}

// WriteAt writes with pwrite. A write running past the end writes nothing
// and returns ErrOutOfRange rather than growing the file.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if err := f.checkWrite("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if f.serialWrites && !f.direct {
		f.writeMu.Lock()
		defer f.writeMu.Unlock()
	}
	n, err := f.pwrite(p, off)
	if err != nil {
		return n, fmt.Errorf("write backend: %w", err)
	}
	return n, nil
}

// WriteAtFUA writes p and makes it durable before returning. It uses
// pwritev2 with RWF_DSYNC, which makes only this write durable, and falls
// back to pwrite followed by fdatasync where the kernel or filesystem lacks
// RWF_DSYNC, and for O_DIRECT files.
func (f *File) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := f.checkWrite("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if !f.direct && !f.noDSync.Load() {
		n, err := f.writeDSync(p, off)
		if n > 0 || !(unsupported(err) || errors.Is(err, unix.EINVAL)) {
			return n, err
		}
		f.noDSync.Store(true)
	}
	n, err := f.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, f.Sync()
}

// writeDSync writes all of p at off with pwritev2(RWF_DSYNC).
func (f *File) writeDSync(p []byte, off int64) (int, error) {
	done := 0
	iov := [][]byte{nil}
	err := f.control(func(fd int) error {
		for done < len(p) {
			iov[0] = p[done:]
			n, err := unix.Pwritev2(fd, iov, off+int64(done), unix.RWF_DSYNC)
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				return err
			case n == 0:
				return io.ErrShortWrite
			}
			done += n
		}
		return nil
	})
	if err != nil {
		if mayBeWriteBack(err) {
			f.failSync(err) // the sync may have met other writes' failed write-back
		}
		return done, fmt.Errorf("pwritev2 RWF_DSYNC at offset %d: %w", off, err)
	}
	return done, nil
}

// mayBeWriteBack reports whether a failed RWF_DSYNC write's error may
// have come from its sync, which consumes the file's once-only report of a
// failed write-back (of this write or any other): every error but those
// that only the write itself or the call can cause (a bad argument, a
// flag the filesystem lacks, a file too large, a permission). Network
// filesystems report write-back failures with more than EIO (ESTALE,
// EREMOTEIO, ETIMEDOUT), so the rule is by exclusion.
func mayBeWriteBack(err error) bool {
	if unsupported(err) { // no pwritev2 or no RWF_DSYNC: nothing was synced
		return false
	}
	for _, notSync := range []error{unix.EINVAL, unix.EOPNOTSUPP, unix.ENOTSUP, unix.EFAULT,
		unix.EFBIG, unix.EBADF, unix.EPERM, io.ErrShortWrite} {
		if errors.Is(err, notSync) {
			return false
		}
	}
	return true
}

// Sync calls fdatasync and returns its error: a failed fdatasync means
// written data may be lost, and the client must hear about it.
//
// The failure is kept, and every later Sync fails with it. Linux reports
// a failed writeback once per open file and may drop the pages it could
// not write (PostgreSQL's "fsyncgate"); every connection shares this
// file, so without that the next FLUSH, from any client, would succeed
// over writes that were lost. qemu's file-posix does the same. A FUA
// write's own durability is unaffected: RWF_DSYNC covers only its data.
func (f *File) Sync() error {
	if err := f.syncFailed.Load(); err != nil {
		return fmt.Errorf("an earlier write-back of %s failed, written data may be lost: %w", f.f.Name(), *err)
	}
	if err := f.control(fdatasync); err != nil {
		f.failSync(err)
		return fmt.Errorf("fdatasync %s: %w", f.f.Name(), err)
	}
	return nil
}

// failSync keeps the first write-back failure for Sync.
func (f *File) failSync(err error) {
	f.syncFailed.CompareAndSwap(nil, &err)
}

// Cache asks the kernel to read [off, off+length) ahead
// (posix_fadvise WILLNEED).
func (f *File) Cache(off, length int64) error {
	if err := checkRange("cache", off, length, f.size); err != nil || length == 0 {
		return err // length 0 would mean "to the end" to fadvise
	}
	err := f.control(func(fd int) error { return unix.Fadvise(fd, off, length, unix.FADV_WILLNEED) })
	if err != nil {
		return fmt.Errorf("fadvise willneed: %w", err)
	}
	return nil
}

// unsupported reports whether err says the filesystem or device lacks an
// operation, rather than that the operation failed.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// fallocate runs fallocate(2) with mode unless an earlier call showed the
// mode unsupported, in which case it returns errors.ErrUnsupported at once.
func (f *File) fallocate(mode uint32, missing *atomic.Bool, off, length int64) error {
	if missing.Load() {
		return errors.ErrUnsupported
	}
	err := f.control(func(fd int) error { return fallocate(fd, mode, off, length) })
	f.lastData.Store(nil) // the range may be a hole now
	if unsupported(err) {
		missing.Store(true)
		return errors.ErrUnsupported
	}
	if err != nil {
		return fmt.Errorf("fallocate %#x at offset %d length %d: %w", mode, off, length, err)
	}
	return nil
}

// fallocate is unix.Fallocate; tests replace it to make it fail.
var fallocate = unix.Fallocate

// cannotOffload reports whether a fallocate error means only that this
// range cannot be deallocated or zeroed without writing: the mode is
// unsupported (errors.ErrUnsupported, see File.fallocate), or the range
// is refused (EINVAL: a block device takes only ranges aligned to its
// logical block size).
func cannotOffload(err error) bool {
	return errors.Is(err, errors.ErrUnsupported) || errors.Is(err, unix.EINVAL)
}

// punch deallocates a range, which then reads as zeroes.
func (f *File) punch(off, length int64) error {
	return f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, &f.noPunch, off, length)
}

// zeroRange zeroes a range and keeps it allocated.
func (f *File) zeroRange(off, length int64) error {
	return f.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, &f.noZeroRange, off, length)
}

// Trim punches a hole (fallocate PUNCH_HOLE|KEEP_SIZE), after which the
// range reads as zeroes. TRIM is advisory (proto.md "NBD_CMD_TRIM"), so
// where the filesystem or device cannot punch holes, or not this range
// (a block device's unaligned one), Trim succeeds without changing
// anything rather than writing zeroes, which for a whole-device discard
// from mkfs would mean writing the whole device.
func (f *File) Trim(off, length int64) error {
	if err := f.checkWrite("trim", off, length); err != nil || length == 0 {
		return err
	}
	if err := f.punch(off, length); err != nil && !cannotOffload(err) {
		return err
	}
	return nil
}

// WriteZeroes zeroes [off, off+length). It punches a hole unless noHole is
// set, then tries fallocate ZERO_RANGE, and finally writes zeroes in
// 256 KiB pieces. With fast set it returns ErrNotFast instead of writing
// zeroes, leaving the data untouched. On a block device ZERO_RANGE is not
// tried when fast is set: the kernel quietly writes zeroes itself where
// the device cannot (only PUNCH_HOLE refuses to fall back).
func (f *File) WriteZeroes(off, length int64, noHole, fast bool) error {
	if err := f.checkWrite("write zeroes", off, length); err != nil || length == 0 {
		return err
	}
	if !noHole {
		if err := f.punch(off, length); !cannotOffload(err) {
			return err
		}
	}
	if !(fast && f.blockDev) {
		if err := f.zeroRange(off, length); !cannotOffload(err) {
			return err
		}
	}
	if fast {
		return fmt.Errorf("write zeroes: %w", ErrNotFast)
	}
	return WriteZeroesAt(f, off, length)
}

// seek runs lseek(2) with SEEK_DATA or SEEK_HOLE. It moves the file offset,
// which pread and pwrite do not use. ENXIO (no data or hole before EOF)
// becomes the export size.
func (f *File) seek(off int64, whence int) (int64, error) {
	var pos int64
	err := f.control(func(fd int) (err error) {
		pos, err = unix.Seek(fd, off, whence)
		return err
	})
	if errors.Is(err, unix.ENXIO) {
		return f.size, nil
	}
	if unsupported(err) || errors.Is(err, unix.EINVAL) {
		f.noSeekData.Store(true) // block devices answer EINVAL
		return 0, errors.ErrUnsupported
	}
	if err != nil {
		return 0, fmt.Errorf("lseek %d at offset %d: %w", whence, off, err)
	}
	return pos, nil
}

// Extents maps [off, off+length) with SEEK_DATA and SEEK_HOLE: data extents
// have flags 0 and holes ExtentHole|ExtentZero. Where SEEK_DATA is not
// supported (block devices, some filesystems) the whole range is one data
// extent.
func (f *File) Extents(off, length int64, fn func(Extent) bool) error {
	if err := checkRange("extents", off, length, f.size); err != nil {
		return err
	}
	end := off + length
	for pos := off; pos < end; {
		next, flags, err := f.extentAt(pos)
		if errors.Is(err, errors.ErrUnsupported) {
			fn(Extent{Offset: pos, Length: end - pos})
			return nil
		}
		if err != nil {
			return err
		}
		next = min(max(next, pos+1), end) // never loop on a confused filesystem
		if !fn(Extent{Offset: pos, Length: next - pos, Flags: flags}) {
			return nil
		}
		pos = next
	}
	return nil
}

// extentAt returns the end of the extent starting at pos and its flags.
func (f *File) extentAt(pos int64) (int64, ExtentFlags, error) {
	if f.noSeekData.Load() {
		return 0, 0, errors.ErrUnsupported
	}
	if r := f.lastData.Load(); r != nil && r.lo <= pos && pos < r.hi {
		return r.hi, 0, nil
	}
	data, err := f.seek(pos, unix.SEEK_DATA)
	if err != nil {
		return 0, 0, err
	}
	if data > pos {
		return data, ExtentHole | ExtentZero, nil
	}
	hole, err := f.seek(pos, unix.SEEK_HOLE)
	if err == nil && hole > pos {
		f.lastData.Store(&dataRun{lo: pos, hi: hole})
	}
	return hole, 0, err
}
