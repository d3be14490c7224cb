package backend

// NonBlocking reports true: Memory never waits on I/O.
func (m *Memory) NonBlocking() bool { return true }

// NonBlocking reports whether the file is on tmpfs or ramfs (/dev/shm,
// for instance) and not opened with O_DIRECT: its reads and writes are then
// copies to and from the page cache that never wait on a device. Only
// tmpfs pages pushed out to swap would make one wait, as they would any
// memory export.
func (f *File) NonBlocking() bool { return f.inMemory && !f.direct }
