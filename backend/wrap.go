package backend

import (
	"errors"
	"fmt"
)

// A Decorator is a Backend that wraps another, in the manner of an nbdkit
// filter over its next plugin: ReadOnly and Fault. Unwrap returns the
// backend it wraps.
//
// The decorator rule:
//
//   - A decorator advertises what the backend it wraps can do. Its type
//     has a method for each capability it passes through (Trim, Extents,
//     ...) whether or not the backend it wraps has that capability, so
//     the server finds those capabilities with Has, which looks through
//     the decorator, as nbdkit's filters pass can_trim and friends
//     through. Capabilities with a query method (CanFastZero,
//     CanMultiConn, ReadOnly, MinBlockSize) answer it for the decorator.
//   - A decorator never forwards an accelerator that would move data
//     around it (accelerators.go): its type has none of Viewer,
//     WriteViewer, FileSource, DataKnower, PipeWriter and CachedReader.
type Decorator interface {
	Backend
	Unwrap() Backend
}

// Has returns b as a T when b has the capability T, an optional interface
// without a query method (Trimmer, Zeroer, Cacher, FUAWriter, Extenter):
// b implements T and, if b is a Decorator, so does the backend it wraps,
// all the way down.
func Has[T any](b Backend) (T, bool) {
	t, ok := b.(T)
	for inner := b; ok; {
		d, isDecorator := inner.(Decorator)
		if !isDecorator {
			return t, true
		}
		inner = d.Unwrap()
		_, ok = inner.(T)
	}
	var zero T
	return zero, false
}

// errMissing is what a decorator's method returns for a capability the
// backend it wraps lacks; the server never calls it (Has).
var errMissing = errors.ErrUnsupported

// wrapper is the base of nbdd's decorators: it embeds the wrapped Backend
// and passes every capability through to it, failing with
// errors.ErrUnsupported where the wrapped backend lacks one.
type wrapper struct {
	Backend
}

// Unwrap implements Decorator.
func (w wrapper) Unwrap() Backend { return w.Backend }

// Trim passes through.
func (w wrapper) Trim(off, length int64) error {
	if t, ok := w.Backend.(Trimmer); ok {
		return t.Trim(off, length)
	}
	return fmt.Errorf("trim: %w", errMissing)
}

// WriteZeroes passes through.
func (w wrapper) WriteZeroes(off, length int64, noHole, fast bool) error {
	if z, ok := w.Backend.(Zeroer); ok {
		return z.WriteZeroes(off, length, noHole, fast)
	}
	return fmt.Errorf("write zeroes: %w", errMissing)
}

// CanFastZero passes through, or reports false.
func (w wrapper) CanFastZero() bool {
	z, ok := w.Backend.(FastZeroer)
	return ok && z.CanFastZero()
}

// WriteAtFUA passes through.
func (w wrapper) WriteAtFUA(p []byte, off int64) (int, error) {
	if fw, ok := w.Backend.(FUAWriter); ok {
		return fw.WriteAtFUA(p, off)
	}
	return 0, fmt.Errorf("write with FUA: %w", errMissing)
}

// Extents passes through.
func (w wrapper) Extents(off, length int64, fn func(Extent) bool) error {
	if e, ok := w.Backend.(Extenter); ok {
		return e.Extents(off, length, fn)
	}
	return fmt.Errorf("extents: %w", errMissing)
}

// Cache passes through.
func (w wrapper) Cache(off, length int64) error {
	if c, ok := w.Backend.(Cacher); ok {
		return c.Cache(off, length)
	}
	return fmt.Errorf("cache: %w", errMissing)
}

// CanMultiConn passes through, or reports false, the conservative answer.
func (w wrapper) CanMultiConn() bool {
	m, ok := w.Backend.(MultiConner)
	return ok && m.CanMultiConn()
}

// ReadOnly passes through, or reports false.
func (w wrapper) ReadOnly() bool {
	r, ok := w.Backend.(ReadOnlyer)
	return ok && r.ReadOnly()
}

// MinBlockSize passes through, or reports 1 (any alignment).
func (w wrapper) MinBlockSize() uint32 {
	if b, ok := w.Backend.(BlockSizer); ok {
		return b.MinBlockSize()
	}
	return 1
}

// NonBlocking passes through, or reports false.
func (w wrapper) NonBlocking() bool {
	nb, ok := w.Backend.(NonBlocker)
	return ok && nb.NonBlocking()
}

// SyncWaits passes through, or reports false.
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
// (Extents, Cache, CanMultiConn, MinBlockSize, NonBlocking, SyncWaits)
// pass through to b (see Decorator). ReadOnly reports true.
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
