package backend

import "os"

// Accelerators: optional interfaces that only make the server faster. A
// backend with none of them is served correctly (every request through a
// buffer, on a goroutine of its own); each one lets the server skip a copy,
// a buffer or a goroutine hand-off, and none changes what the server
// advertises. The capabilities that do change it (Trimmer … BlockSizer)
// are in backend.go.
//
//   - NonBlocker, SyncWaiter: the backend never waits on I/O (or only in
//     Sync), so the reading goroutine may run its requests itself.
//   - Viewer, WriteViewer: the backend lends its memory, which the kernel
//     reads into the socket (writev) or fills from it (readv).
//   - Lender: the backend lends buffers of a cache it reuses, pinned
//     until the reply that sends them has been written.
//   - FileSource, DataKnower: the backend's data is a file, sent from the
//     page cache with sendfile(2).
//   - PipeWriter: the backend takes WRITE payloads with splice(2).
//   - CachedReader: the backend can try a read without waiting on a device.
//
// The decorator rule (Decorator): a decorator never forwards an
// accelerator that would move data around it. Viewer, WriteViewer,
// Lender, FileSource, DataKnower, PipeWriter and CachedReader hand the server a
// way to the data other than the decorator's ReadAt and WriteAt, so a
// read-only or fault-injecting decorator that forwarded one would be
// bypassed: its type does not have them. NonBlocker and SyncWaiter only
// describe the backend, so a decorator forwards them when they hold for
// it too (a Fault with a delay rule is not NonBlocking).

// NonBlocker is implemented by backends whose ReadAt and WriteAt are plain
// memory copies that never wait on I/O. The server may then run small
// requests on the goroutine that read them instead of handing each one to
// a goroutine of its own, which costs more than the copy. A backend that
// can block (a file, a network store, a fault injector with delays) must
// not claim this: a blocked request would stall the requests behind it.
type NonBlocker interface {
	NonBlocking() bool
}

// SyncWaiter is implemented by NonBlocker backends whose Sync may still
// wait on I/O: a memory image written back to a file on FLUSH. The server
// then runs their FLUSH and FUA requests on goroutines of their own, so a
// write-back never stalls the requests behind it.
type SyncWaiter interface {
	SyncWaits() bool
}

// Viewer is implemented by memory backends that can lend their own bytes
// for a READ reply, so the server hands them to writev(2) without copying
// them into a buffer first ("a memory backend may write straight from its
// own pages").
//
// AppendView appends to iov slices that together hold the n bytes at off,
// and returns the extended iov. The slices alias the backend's memory: the
// caller must not modify them, and their contents may change under a
// concurrent write to the same range, which NBD leaves undefined anyway
// (proto.md "Ordering of messages and writes"). The memory stays valid
// while the slices are referenced; unwritten ranges alias a shared,
// read-only block of zeroes. Only the kernel may read the slices while
// writes can run (the server uses views on sockets only), because a Go
// read of them would race with WriteAt.
type Viewer interface {
	AppendView(iov [][]byte, off, n int64) ([][]byte, error)
}

// Lender is implemented by backends that keep READ data in buffers they
// reuse (a read cache) and can lend those for a READ reply, so the server
// hands them to writev(2) instead of copying them into a buffer first.
// Unlike a Viewer's memory, a lent buffer would be reused once the cache
// evicts it, so each loan pins what it lends: the buffers are neither
// changed nor reused until the loan is released.
//
// Lend appends to iov slices that together hold the n bytes at off, and
// returns the extended iov and the loan that pins them. It is ReadAt
// without the copy: it may wait for I/O, and fails where ReadAt would,
// pinning nothing then (the loan is nil). Parts the backend holds in no
// buffer of its cache are read into memory the loan owns. The caller must
// not modify the slices, and calls Release once, when it no longer uses
// them, whatever became of the reply (sent, failed, the connection
// closed). A loan pins memory outside the server's buffer budget: the
// server holds one per READ in flight.
type Lender interface {
	Lend(iov [][]byte, off, n int64) ([][]byte, Loan, error)
}

// Loan is what a Lender lent for one READ. Release gives it back; the
// slices must not be used afterwards.
type Loan interface {
	Release()
}

// WriteViewer is implemented by memory backends that lend their own bytes
// for a WRITE, so the server reads the payload from the socket straight
// into the export with readv(2): one copy, by the kernel, instead of one
// into a buffer and a second into the export.
//
// AppendWriteView appends to iov slices that together are the n bytes at
// off, allocating storage where there is none, and returns the extended
// iov. The caller fills them completely or the connection dies, then calls
// CommitWriteView with the same range, whatever happened; the range reads
// as written from then on. As with Viewer, only the kernel may write the
// slices: a concurrent request to the same range sees old bytes, new bytes
// or a mix, which NBD leaves undefined (proto.md "Ordering of messages and
// writes"), and a concurrent Trim of the range may drop the write, as it
// could drop it if run just after.
type WriteViewer interface {
	AppendWriteView(iov [][]byte, off, n int64) ([][]byte, error)
	CommitWriteView(off, n int64)
}

// CachedReader is implemented by backends that can try a read without
// waiting on a device. ReadCached reads all of p at off and reports true
// when the data is in memory already (the page cache) and the read needs
// no I/O; otherwise it reports false and p holds nothing useful, and the
// caller reads with ReadAt, which may wait and reports any error. It
// never waits on I/O.
//
// The server uses it to answer small READs of cached data on the
// goroutine that read the request, as it does for backends that never
// block (NonBlocker), instead of handing each one to a goroutine of its
// own.
type CachedReader interface {
	ReadCached(p []byte, off int64) bool
}

// PipeWriter is implemented by backends that can take data straight from a
// pipe with splice(2) (File). The server then moves a large WRITE's
// payload from the socket into a pipe and from the pipe into the backend:
// the kernel copies it once, into the page cache, where a buffer would
// cost two copies (socket to buffer, buffer to page cache). A pipe moves
// page references, not bytes.
type PipeWriter interface {
	// CanWriteFromPipe reports whether WriteFromPipe may be used: false for
	// a File opened with O_DIRECT, whose writes must be aligned buffers.
	CanWriteFromPipe() bool
	// WriteFromPipe moves exactly n bytes from the pipe whose read end is
	// the file descriptor pipe into the backend at off, and returns how
	// many it moved. The pipe holds at least n bytes, so the call never
	// waits for data. On error, the bytes not moved are still in the pipe:
	// the caller drains them. The range was validated by the caller, but a
	// range past the end still fails with ErrOutOfRange and moves nothing.
	WriteFromPipe(pipe int, off int64, n int) (int, error)
}

// FileSource is implemented by backends whose data is a file the kernel
// can send to a socket without a copy through user space (File). The
// server sends a READ from it with sendfile(2) when the whole range is in
// the page cache: sendfile then waits on no device while it holds the
// socket, and meets no bad sector after the reply's header went out.
type FileSource interface {
	// File returns the file. The caller must not close it, nor use its
	// file offset: sendfile is given an explicit one.
	File() *os.File
	// Cached reports whether all n bytes at off are in the page cache.
	// Pages may be evicted right after the answer: it chooses a path,
	// it promises nothing.
	Cached(off, n int64) bool
}

// DataKnower is implemented by backends that can tell, without a system
// call, that a range holds data only (File, from the last run of data its
// Extents found). The server then sends a READ of a file on a disk with
// sendfile from the reading goroutine, with no hole to look up: an
// extent lookup (SEEK_DATA) may wait on the file's inode lock behind a
// write.
type DataKnower interface {
	KnownData(off, n int64) bool
}
