// Package backend defines the storage behind an NBD export and ships the
// implementations nbdd serves: sparse memory, files and block devices, a
// mergeable anonymous mapping for KSM, and decorators (read-only, fault
// injection).
//
// The core interface has the same method set as go-nbd v0.3.2's
// backend.Backend, so any backend written for github.com/pojntfx/go-nbd
// plugs into nbdd unchanged. Everything beyond it is optional, discovered
// by type assertion the way net/http discovers http.Flusher, in two
// groups:
//
//   - Capabilities change what the server advertises and does (proto.md
//     "Transmission flags"): Trimmer, Zeroer, FastZeroer, Cacher,
//     FUAWriter, Extenter, MultiConner, ReadOnlyer, BlockSizer (this file).
//     Where a backend lacks one, the server either withdraws the feature
//     (TRIM, FAST_ZERO, multi-conn) or does it itself (WRITE_ZEROES by
//     writing zeroes, FUA by a Sync, block status as one data extent).
//   - Accelerators only make the server faster: NonBlocker, SyncWaiter,
//     Viewer, WriteViewer, FileSource, DataKnower, PipeWriter,
//     CachedReader (accelerators.go).
//
// Decorators (ReadOnly, Fault; wrap.go) wrap a Backend as nbdkit's filters
// wrap a plugin: they advertise what the backend they wrap can do, and
// never forward an accelerator that would bypass them.
package backend

import (
	"errors"
	"io"
)

// Backend is the storage behind one export. ReadAt and WriteAt follow the
// io.ReaderAt and io.WriterAt contracts: n < len(p) implies err != nil, and
// calls on non-overlapping ranges may run in parallel. The server checks every
// range against Size before calling, so implementations may assume
// 0 <= off and off+len(p) <= size. nbdd's own backends check anyway: a
// write past the end writes nothing and returns ErrOutOfRange, and a read
// past the end returns the bytes before it with an error matching both
// ErrOutOfRange and io.EOF.
type Backend interface {
	io.ReaderAt
	io.WriterAt
	// Size reports the export size in bytes.
	Size() (int64, error)
	// Sync makes every completed write durable (NBD_CMD_FLUSH).
	Sync() error
}

// Trimmer is implemented by backends that can discard a range
// (NBD_CMD_TRIM, advertised as NBD_FLAG_SEND_TRIM). After Trim the range
// reads as zeroes or as its old contents (TRIM is advisory); nbdd's
// backends read zeroes, except File on storage that cannot punch holes,
// where Trim changes nothing.
type Trimmer interface {
	Trim(off, length int64) error
}

// Zeroer is implemented by backends that can zero a range without a payload
// (NBD_CMD_WRITE_ZEROES, advertised as NBD_FLAG_SEND_WRITE_ZEROES). When
// noHole is true the range must stay allocated (NBD_CMD_FLAG_NO_HOLE).
// When fast is true (NBD_CMD_FLAG_FAST_ZERO) the backend must either zero
// the range faster than writing zeroes would, or return ErrNotFast at once
// without touching the data.
type Zeroer interface {
	WriteZeroes(off, length int64, noHole, fast bool) error
}

// FastZeroer is implemented by Zeroers that understand the fast flag, so the
// server may advertise NBD_FLAG_SEND_FAST_ZERO.
type FastZeroer interface {
	Zeroer
	CanFastZero() bool
}

// Cacher is implemented by backends that can prefetch a range
// (NBD_CMD_CACHE, NBD_FLAG_SEND_CACHE). Backends without it still get
// CACHE answered as a successful no-op.
type Cacher interface {
	Cache(off, length int64) error
}

// FUAWriter is implemented by backends that can make a single write durable
// more cheaply than a full Sync (NBD_CMD_FLAG_FUA). Without it the server
// follows a FUA write with Sync.
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// ExtentFlags describe a range in the base:allocation meta context
// (proto.md "base:allocation metadata context").
type ExtentFlags uint32

const (
	// ExtentHole means the range is not allocated.
	ExtentHole ExtentFlags = 1 << 0
	// ExtentZero means the range reads as zeroes.
	ExtentZero ExtentFlags = 1 << 1
)

// Extent is one run of bytes with the same allocation state.
type Extent struct {
	Offset int64
	Length int64
	Flags  ExtentFlags
}

// Extenter is implemented by backends that know which ranges are allocated
// (NBD_CMD_BLOCK_STATUS). Extents calls fn for consecutive extents covering
// [off, off+length) in order, merging neighbours with equal flags, until fn
// returns false or the range is covered. The last extent may run past
// off+length (nbdd's backends clip it). A backend that cannot tell may
// report one data extent (flags 0), which is always correct.
type Extenter interface {
	Extents(off, length int64, fn func(Extent) bool) error
}

// MultiConner reports whether several connections to the same backend see a
// consistent view, so that a FLUSH on one covers writes made on another
// (NBD_FLAG_CAN_MULTI_CONN). Backends that do not implement it are assumed
// not to, unless the server is told otherwise.
type MultiConner interface {
	CanMultiConn() bool
}

// ReadOnlyer is implemented by backends that cannot be written; the server
// then advertises NBD_FLAG_READ_ONLY and answers writes with EPERM.
type ReadOnlyer interface {
	ReadOnly() bool
}

// BlockSizer is implemented by backends with a minimum I/O size larger than
// one byte (for example 512 for O_DIRECT files); the server reports it in
// NBD_INFO_BLOCK_SIZE.
type BlockSizer interface {
	MinBlockSize() uint32
}

// Errors returned by backends and mapped to NBD errnos by the server.
var (
	// ErrReadOnly is returned by writes to a read-only backend (NBD_EPERM).
	ErrReadOnly = errors.New("backend: read-only")
	// ErrNotFast is returned by WriteZeroes with fast set when zeroing would
	// not be faster than writing (NBD_ENOTSUP, proto.md "NBD_CMD_FLAG_FAST_ZERO").
	ErrNotFast = errors.New("backend: zeroing would not be fast")
	// ErrOutOfRange is returned for a range past the end of the backend
	// (NBD_EINVAL or NBD_ENOSPC, depending on the command).
	ErrOutOfRange = errors.New("backend: range out of bounds")
)
