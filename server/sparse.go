package server

import (
	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
)

// Sparse reads (proto.md "Structured reply types": NBD_REPLY_TYPE_OFFSET_HOLE).
const (
	// maxSparseChunks bounds the chunks of one sparse reply; extents past
	// it are sent as data.
	maxSparseChunks = 64
)

// segment is a run of a READ that is either data or a known-zero hole.
type segment struct {
	off, n int64
	hole   bool
}

// readSparse answers a structured READ planned askHoles whose range holds
// holes with OFFSET_DATA and OFFSET_HOLE chunks, so zeroes never cross the
// wire. The data runs are lent by the backend when lend is set
// (PathReadLent), or read into o.buf. It reports false, having done
// nothing, when the range is all data.
func (c *conn) readSparse(o *op, lend bool) (bool, error) {
	segs, err := c.segments(int64(o.req.Offset), int64(o.req.Length))
	if err != nil || len(segs) < 2 && !(len(segs) == 1 && segs[0].hole) {
		return false, nil
	}
	base := int64(o.req.Offset)
	o.views, o.segViews = o.views[:0], o.segViews[:0]
	for _, s := range segs {
		if s.hole {
			continue
		}
		o.segViews = append(o.segViews, len(o.views))
		if lend {
			if err := o.lend(s.off, s.n); err != nil {
				return true, err
			}
		} else {
			part := o.buf[s.off-base : s.off-base+s.n]
			if err := readFull(c.exp.Backend, part, s.off); err != nil {
				return true, err
			}
			o.views = append(o.views, part)
		}
	}
	o.segViews = append(o.segViews, len(o.views))
	o.buildSparse(c.format, segs)
	for _, s := range segs {
		if s.hole {
			c.counts.holes.Add(s.n)
		}
	}
	return true, nil
}

// segments splits [off, off+n) into data and hole runs, at most
// maxSparseChunks of them: the last one then runs to the end as data.
// Whatever the backend leaves unreported at the end is data.
func (c *conn) segments(off, n int64) ([]segment, error) {
	end := off + n
	var segs []segment
	err := backend.WalkExtents(c.exp.extenter, off, n, holeKey, func(e backend.Extent) bool {
		if len(segs) == maxSparseChunks-1 {
			segs = append(segs, segment{off: e.Offset, n: end - e.Offset})
			return false
		}
		segs = append(segs, segment{off: e.Offset, n: e.Length, hole: e.Flags != 0})
		return true
	})
	if k := len(segs); err == nil && k > 0 && segs[k-1].off+segs[k-1].n < end {
		last := segs[k-1].off + segs[k-1].n
		if segs[k-1].hole {
			segs = append(segs, segment{off: last, n: end - last})
		} else {
			segs[k-1].n = end - segs[k-1].off
		}
	}
	return segs, err
}

// holeKey merges extents by whether they read as zeroes: those go out as
// hole chunks, whatever else their flags say.
func holeKey(f backend.ExtentFlags) backend.ExtentFlags { return f & backend.ExtentZero }

// buildSparse encodes one chunk per segment into o.extra, its headers
// written by f, and points o.iov at those chunks and at the data slices in
// o.views (data segment k is o.views[o.segViews[k]:o.segViews[k+1]]); the
// last chunk carries DONE.
func (o *op) buildSparse(f replyFormat, segs []segment) {
	b := o.extra[:0]
	var h [maxReplyHeader]byte
	holeLen, dataHdr := 0, 0 // the same for every chunk of a connection
	for i, s := range segs {
		flags := protocol.ReplyFlag(0)
		if i == len(segs)-1 {
			flags = protocol.ReplyFlagDone
		}
		if s.hole {
			k := f.putChunk(h[:], &o.req, flags, protocol.ReplyTypeOffsetHole, protocol.OffsetHoleSize)
			b = protocol.AppendOffsetHole(append(b, h[:k]...), uint64(s.off), uint32(s.n))
			holeLen = k + protocol.OffsetHoleSize
			continue
		}
		dataHdr = f.putData(h[:], &o.req, flags, uint64(s.off), int(s.n))
		b = append(b, h[:dataHdr]...)
	}
	o.extra = b
	o.iov = o.iov[:0]
	pos, k := 0, 0
	for _, s := range segs {
		if s.hole {
			o.iov = append(o.iov, b[pos:pos+holeLen])
			pos += holeLen
			continue
		}
		o.iov = append(o.iov, b[pos:pos+dataHdr])
		o.iov = append(o.iov, o.views[o.segViews[k]:o.segViews[k+1]]...)
		pos += dataHdr
		k++
	}
}
