package backend

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

// NonBlocking reports true: Memory never waits on I/O.
func (m *Memory) NonBlocking() bool { return true }

// NonBlocking reports whether the file is on tmpfs or ramfs (/dev/shm,
// for instance) and not opened with O_DIRECT: its reads and writes are then
// copies to and from the page cache that never wait on a device. Only
// tmpfs pages pushed out to swap would make one wait, as they would any
// memory export.
func (f *File) NonBlocking() bool { return f.inMemory && !f.direct }
