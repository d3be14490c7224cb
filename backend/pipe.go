package backend

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
