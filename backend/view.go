package backend

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

// zeroChunk backs views of unwritten memory. Nothing ever writes to it.
var zeroChunk chunk

// AppendView implements Viewer: one slice per 64 KiB chunk touched.
func (m *Memory) AppendView(iov [][]byte, off, n int64) ([][]byte, error) {
	if err := checkRange("view", off, n, m.size); err != nil {
		return iov, err
	}
	span(off, n, func(i int64, o, lo, hi int) {
		c := &zeroChunk
		if l := m.leaf(i, false); l != nil {
			if p := l.chunks[i&tableMask].Load(); p != nil {
				c = p
			}
		}
		iov = append(iov, c[o:o+hi-lo])
	})
	return iov, nil
}

// AppendView implements Viewer: one slice of the mapping.
func (m *Mapped) AppendView(iov [][]byte, off, n int64) ([][]byte, error) {
	size, _ := m.Size()
	if err := checkRange("view", off, n, size); err != nil {
		return iov, err
	}
	return append(iov, m.Bytes()[off:off+n]), nil
}
