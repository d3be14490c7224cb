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

// WriteViewer is implemented by memory backends that lend their own bytes
// for a WRITE, so the server reads the payload from the socket straight
// into the export with readv(2): one copy, by the kernel, instead of one
// into a buffer and a second into the export.
//
// AppendWriteView appends to iov slices that together are the n bytes at
// off, allocating storage where there is none, and returns the extended
// iov. The caller fills them completely or the connection dies, then calls
// CommitWriteView with the same range, whatever happened; the range reads
// as written from then on. As with Viewer, only the kernel may write the
// slices: a concurrent request to the same range sees old bytes, new bytes
// or a mix, which NBD leaves undefined (proto.md "Ordering of messages and
// writes"), and a concurrent Trim of the range may drop the write, as it
// could drop it if run just after.
type WriteViewer interface {
	AppendWriteView(iov [][]byte, off, n int64) ([][]byte, error)
	CommitWriteView(off, n int64)
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

// AppendWriteView implements WriteViewer: one slice per 64 KiB chunk
// touched, each allocated if it was absent.
func (m *Memory) AppendWriteView(iov [][]byte, off, n int64) ([][]byte, error) {
	if err := checkRange("write view", off, n, m.size); err != nil {
		return iov, err
	}
	span(off, n, func(i int64, o, lo, hi int) {
		c := m.leaf(i, true).chunkForWrite(int(i&tableMask), &m.chunks)
		iov = append(iov, c[o:o+hi-lo])
	})
	return iov, nil
}

// CommitWriteView implements WriteViewer: nothing is left to record.
func (m *Memory) CommitWriteView(off, n int64) {}

// AppendView implements Viewer: one slice of the mapping.
func (m *Mapped) AppendView(iov [][]byte, off, n int64) ([][]byte, error) {
	size, _ := m.Size()
	if err := checkRange("view", off, n, size); err != nil {
		return iov, err
	}
	return append(iov, m.Bytes()[off:off+n]), nil
}

// AppendWriteView implements WriteViewer: one slice of the mapping. The
// range counts as data for Extents from now on.
func (m *Mapped) AppendWriteView(iov [][]byte, off, n int64) ([][]byte, error) {
	if err := checkRange("write view", off, n, m.size); err != nil {
		return iov, err
	}
	if n > 0 {
		m.written.set(m.blockRange(off, n))
	}
	return append(iov, m.mem[off:off+n:off+n]), nil
}

// CommitWriteView implements WriteViewer: the range counts as data again
// (see WriteAt: a racing WriteZeroes may have cleared it), and a
// persistent export marks it for the next Sync.
func (m *Mapped) CommitWriteView(off, n int64) {
	if n > 0 {
		lo, hi := m.blockRange(off, n)
		m.written.set(lo, hi)
		m.markDirty(lo, hi)
	}
}
