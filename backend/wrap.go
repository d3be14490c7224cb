package backend

import (
	"fmt"
)

// wrapper is the base of nbdd's decorators, in the manner of an nbdkit
// filter's next_ops: it embeds the wrapped Backend and implements every
// optional capability by delegating to it, so that type assertions on a
// decorator find the capabilities. Where the wrapped backend lacks one, the
// method falls back to a safe default, documented on each method.
type wrapper struct {
	Backend
}

// Trim delegates, or does nothing if the wrapped backend is not a
// Trimmer. A decorator always has this method, so the server advertises
// NBD_FLAG_SEND_TRIM for it; TRIM is a hint that a server "MAY" act on
// (proto.md "NBD_CMD_TRIM"), so ignoring it is correct, where an error
// would be NBD_ENOTSUP, which the spec keeps for fast zeroes.
func (w wrapper) Trim(off, length int64) error {
	if t, ok := w.Backend.(Trimmer); ok {
		return t.Trim(off, length)
	}
	return nil
}

// WriteZeroes delegates, or writes zeroes with WriteAt (ErrNotFast when
// fast is set) if the wrapped backend is not a Zeroer.
func (w wrapper) WriteZeroes(off, length int64, noHole, fast bool) error {
	if z, ok := w.Backend.(Zeroer); ok {
		return z.WriteZeroes(off, length, noHole, fast)
	}
	if fast {
		return fmt.Errorf("write zeroes: %w", ErrNotFast)
	}
	return writeZeroes(w.Backend, off, length)
}

// CanFastZero delegates, or reports false.
func (w wrapper) CanFastZero() bool {
	z, ok := w.Backend.(FastZeroer)
	return ok && z.CanFastZero()
}

// WriteAtFUA delegates, or follows WriteAt with Sync.
func (w wrapper) WriteAtFUA(p []byte, off int64) (int, error) {
	if fw, ok := w.Backend.(FUAWriter); ok {
		return fw.WriteAtFUA(p, off)
	}
	n, err := w.Backend.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, w.Backend.Sync()
}

// Extents delegates, or reports the whole range as one data extent, which
// claims nothing about holes or zeroes and so is always correct.
func (w wrapper) Extents(off, length int64, fn func(Extent) bool) error {
	if e, ok := w.Backend.(Extenter); ok {
		return e.Extents(off, length, fn)
	}
	fn(Extent{Offset: off, Length: length})
	return nil
}

// Cache delegates, or does nothing (CACHE is only a hint).
func (w wrapper) Cache(off, length int64) error {
	if c, ok := w.Backend.(Cacher); ok {
		return c.Cache(off, length)
	}
	return nil
}

// CanMultiConn delegates, or reports false, the conservative answer.
func (w wrapper) CanMultiConn() bool {
	m, ok := w.Backend.(MultiConner)
	return ok && m.CanMultiConn()
}

// ReadOnly delegates, or reports false.
func (w wrapper) ReadOnly() bool {
	r, ok := w.Backend.(ReadOnlyer)
	return ok && r.ReadOnly()
}

// MinBlockSize delegates, or reports 1 (any alignment).
func (w wrapper) MinBlockSize() uint32 {
	if b, ok := w.Backend.(BlockSizer); ok {
		return b.MinBlockSize()
	}
	return 1
}

// NonBlocking delegates, or reports false.
func (w wrapper) NonBlocking() bool {
	nb, ok := w.Backend.(NonBlocker)
	return ok && nb.NonBlocking()
}

// SyncWaits delegates, or reports false.
func (w wrapper) SyncWaits() bool {
	sw, ok := w.Backend.(SyncWaiter)
	return ok && sw.SyncWaits()
}

// readOnly is the decorator returned by ReadOnly.
type readOnly struct {
	wrapper
}

// ReadOnly returns b with every write refused with ErrReadOnly: WriteAt,
// WriteAtFUA, Trim and WriteZeroes. Reads, Sync and the other capabilities
// (Extents, Cache, CanMultiConn, MinBlockSize, NonBlocking, SyncWaits) pass through to
// b, so type assertions on the result find them; where b lacks one, the
// result answers with a safe default: one data extent, a no-op Cache, no
// multi-conn, a block size of 1, possibly blocking. ReadOnly reports true.
func ReadOnly(b Backend) Backend {
	if r, ok := b.(readOnly); ok {
		return r
	}
	return readOnly{wrapper{b}}
}

// ReadOnly reports true.
func (readOnly) ReadOnly() bool { return true }

// WriteAt returns ErrReadOnly.
func (readOnly) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("write: %w", ErrReadOnly)
}

// WriteAtFUA returns ErrReadOnly.
func (r readOnly) WriteAtFUA(p []byte, off int64) (int, error) {
	return r.WriteAt(p, off)
}

// Trim returns ErrReadOnly.
func (readOnly) Trim(off, length int64) error {
	return fmt.Errorf("trim: %w", ErrReadOnly)
}

// WriteZeroes returns ErrReadOnly.
func (readOnly) WriteZeroes(off, length int64, noHole, fast bool) error {
	return fmt.Errorf("write zeroes: %w", ErrReadOnly)
}

// CanFastZero reports false: nothing can be written.
func (readOnly) CanFastZero() bool { return false }
