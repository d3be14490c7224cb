//go:build linux

package backend

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// A Clone whose base and overlay are both in memory (a base loaded into
// memory or a file on tmpfs, and an overlay on tmpfs) can lend its READs
// as a memory backend does (Viewer): the base's bytes and the overlay's
// come from read-only shared mappings of their files, which are the
// files' pages in memory themselves, so the kernel copies a READ's data
// once, from those pages to the socket, as sendfile does for a raw file
// export. On a disk, a page not in memory would make the kernel wait for
// it in the middle of sending the reply, so a Clone there lends nothing.

// viewClone is a Clone that lends its READs (see Clone.Export).
type viewClone struct {
	*Clone
	base []byte // the base's content
	ov   []byte // the overlay file
	// baseHoles is set when the base is a file with holes, which views
	// must not lend: a read of a hole through a shared mapping of a tmpfs
	// file allocates a page for it, where pread does not.
	baseHoles bool
}

// Export returns the Backend to serve for c: c itself, or, when its base
// and overlay are both in memory, c with Viewer too. The mappings it
// makes are undone by Close (the overlay's) and CloneBase.Close (the
// base's).
func (c *Clone) Export() Backend {
	if !c.NonBlocking() {
		return c
	}
	ovFile, ok := c.ov.(*File)
	if !ok || c.cb == nil {
		return c
	}
	base, err := c.cb.view()
	if err != nil {
		return c
	}
	size, _ := ovFile.Size()
	if size == 0 || c.size == 0 {
		return c
	}
	var ov []byte
	err = ovFile.control(func(fd int) (err error) {
		ov, err = unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
		return err
	})
	if err != nil {
		return c
	}
	c.unmap = func() error { return unix.Munmap(ov) }
	return viewClone{Clone: c, base: base, ov: ov, baseHoles: hasHoles(c.base, c.size)}
}

// hasHoles reports whether b reports any hole (or cannot say), for a
// file; memory never needs the care.
func hasHoles(b Backend, size int64) bool {
	f, ok := b.(*File)
	if !ok {
		return false
	}
	holes := false
	err := f.Extents(0, size, func(e Extent) bool {
		holes = e.Flags&ExtentHole != 0
		return !holes
	})
	return holes || err != nil
}

// AppendView implements Viewer: one slice per run of blocks in one
// state, from the base's mapping, the overlay's, or shared zeroes.
func (v viewClone) AppendView(iov [][]byte, off, n int64) ([][]byte, error) {
	c := v.Clone
	if err := checkRange("view", off, n, c.size); err != nil || n == 0 {
		return iov, err
	}
	c.eachRun(off, off+n, func(s blockState, pos, stop int64) error {
		switch {
		case s == stateBase && v.baseHoles:
			iov = v.appendBase(iov, pos, stop)
		case s == stateBase:
			iov = append(iov, v.base[pos:stop])
		case s == stateData:
			iov = append(iov, v.ov[c.dataOff+pos:c.dataOff+stop])
		default:
			iov = appendZeroes(iov, stop-pos)
		}
		return nil
	})
	return iov, nil
}

// appendBase appends views of the base's [pos, stop), its holes as
// shared zeroes.
func (v viewClone) appendBase(iov [][]byte, pos, stop int64) [][]byte {
	next := pos
	v.Clone.base.(Extenter).Extents(pos, stop-pos, func(e Extent) bool {
		lo, hi := max(e.Offset, next), min(e.Offset+e.Length, stop)
		if hi > lo {
			if e.Flags&ExtentZero != 0 {
				iov = appendZeroes(iov, hi-lo)
			} else {
				iov = append(iov, v.base[lo:hi])
			}
			next = hi
		}
		return hi < stop
	})
	if next < stop { // the base could not tell: read it as it is
		iov = append(iov, v.base[next:stop])
	}
	return iov
}

// appendZeroes appends n bytes of shared zeroes.
func appendZeroes(iov [][]byte, n int64) [][]byte {
	for ; n > 0; n -= chunkSize {
		iov = append(iov, zeroChunk[:min(chunkSize, n)])
	}
	return iov
}

// baseView is a CloneBase's content as memory, made once for all its
// clones: a Mapped base's own memory, or a read-only shared mapping of
// its file.
type baseView struct {
	once  sync.Once
	mem   []byte
	err   error
	unmap func() error
}

// view returns the base's content as memory (see baseView).
func (b *CloneBase) view() ([]byte, error) {
	b.mem.once.Do(func() {
		switch be := b.b.(type) {
		case *Mapped:
			b.mem.mem = be.Bytes()
		case *File:
			b.mem.err = be.control(func(fd int) (err error) {
				b.mem.mem, err = unix.Mmap(fd, 0, int(b.size), unix.PROT_READ, unix.MAP_SHARED)
				return err
			})
			if b.mem.err == nil {
				m := b.mem.mem
				b.mem.unmap = func() error { return unix.Munmap(m) }
			}
		default:
			b.mem.err = fmt.Errorf("base %s: %T cannot be mapped", b.path, b.b)
		}
	})
	return b.mem.mem, b.mem.err
}
