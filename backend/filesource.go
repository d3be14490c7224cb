package backend

import "os"

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
