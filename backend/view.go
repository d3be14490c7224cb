package backend

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
			if p := l.slots[i&tableMask].chunk.Load(); p != nil {
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
