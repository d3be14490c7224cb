package backend

import (
	"fmt"
	"io"
)

// checkRange returns a wrapped ErrOutOfRange unless [off, off+length) lies
// inside [0, size). It is written to avoid overflow: off+length is never
// computed before off and length are known to be in range.
func checkRange(op string, off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%s %d bytes at offset %d of %d: %w", op, length, off, size, ErrOutOfRange)
	}
	return nil
}

// readLimit returns how many of n bytes at off can be read from a backend of
// the given size. A read that starts inside but runs past the end is cut
// short and reported with an error that is both ErrOutOfRange and io.EOF, so
// callers following the io.ReaderAt contract (io.SectionReader, io.Copy) see
// the end of the data they expect, and the server sees a range error.
// Nothing in nbdd's backends panics on such a read, unlike go-nbd v0.3.2's
// MemoryBackend, which sliced past the end of its buffer.
func readLimit(n int, off, size int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %d bytes at negative offset %d: %w", n, off, ErrOutOfRange)
	}
	if off > size || int64(n) > size-off {
		return int(max(0, size-off)), fmt.Errorf("read %d bytes at offset %d of %d: %w: %w",
			n, off, size, ErrOutOfRange, io.EOF)
	}
	return n, nil
}

// zeroBuf is the one read-only source of zeroes: WriteZeroesAt writes
// from it and Zeroes lends it. It is shared by every goroutine, which is
// safe because nothing ever writes to it.
var zeroBuf [256 << 10]byte

// Zeroes returns up to n zero bytes, at least one if n > 0, from a buffer
// shared by every caller, which must not write to it.
func Zeroes(n int64) []byte { return zeroBuf[:min(n, int64(len(zeroBuf)))] }

// WriteZeroesAt writes length zero bytes at off through w in bounded
// chunks: WRITE_ZEROES for a backend that cannot zero a range any faster.
func WriteZeroesAt(w io.WriterAt, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := w.WriteAt(zeroBuf[:n], off); err != nil {
			return fmt.Errorf("write zeroes at offset %d: %w", off, err)
		}
		off += n
		length -= n
	}
	return nil
}

// WalkExtents calls fn, in order, for the extents e reports over
// [off, off+length), each clipped to the range and merged with the
// neighbours whose flags have the same key (key nil: the same flags;
// the extent fn sees carries the key as its flags), until fn returns
// false or the range is covered. It is the one place extents are
// clipped and merged: for holes in a READ, for BLOCK_STATUS, and for the
// backends that track allocation in blocks (blockExtents).
func WalkExtents(e Extenter, off, length int64, key func(ExtentFlags) ExtentFlags, fn func(Extent) bool) error {
	end := off + length
	mr := extentMerger{fn: fn}
	err := e.Extents(off, length, func(x Extent) bool {
		start, stop := max(x.Offset, off), min(x.Offset+x.Length, end)
		if stop <= start {
			return stop < end
		}
		f := x.Flags
		if key != nil {
			f = key(f)
		}
		return mr.add(start, stop-start, f) && stop < end
	})
	if err == nil {
		mr.flush()
	}
	return err
}

// extentMerger coalesces neighbouring extents with equal flags before
// passing them on, as Extenter requires.
type extentMerger struct {
	fn      func(Extent) bool
	pending Extent
	stopped bool
}

// add appends [off, off+length) with flags f. It reports false once fn has
// asked to stop.
func (m *extentMerger) add(off, length int64, f ExtentFlags) bool {
	if m.stopped || length <= 0 {
		return !m.stopped
	}
	p := &m.pending
	if p.Length > 0 && p.Flags == f && p.Offset+p.Length == off {
		p.Length += length
		return true
	}
	if p.Length > 0 && !m.fn(*p) {
		m.stopped = true
		return false
	}
	*p = Extent{Offset: off, Length: length, Flags: f}
	return true
}

// flush emits the pending extent, if any.
func (m *extentMerger) flush() {
	if !m.stopped && m.pending.Length > 0 {
		m.fn(m.pending)
	}
	m.pending = Extent{}
}

// blockExtents reports the extents of [off, off+length) for a backend that
// tracks allocation in blocks of 1<<shift bytes. run(i) reports whether
// block i is allocated and the first block after it that may differ.
// Allocated blocks are data (flags 0), the others ExtentHole|ExtentZero.
func blockExtents(off, length int64, shift uint, run func(i int64) (bool, int64), fn func(Extent) bool) error {
	mr := extentMerger{fn: fn}
	end := off + length
	for pos := off; pos < end; {
		allocated, next := run(pos >> shift)
		stop := end
		if next <= (end-1)>>shift { // next<<shift may overflow otherwise
			stop = next << shift
		}
		f := ExtentHole | ExtentZero
		if allocated {
			f = 0
		}
		if !mr.add(pos, stop-pos, f) {
			return nil
		}
		pos = stop
	}
	mr.flush()
	return nil
}
