package logdisk

import (
	"errors"
	"hash/crc32"
	"sync"

	"github.com/nbdd/nbdd/backend"
)

var _ backend.Lender = (*Disk)(nil)

// lentZeroes are lent for holes and zero extents, a slice per 256 KiB of
// them. Nothing writes them.
var lentZeroes [256 << 10]byte

// loan is what one Lend lent: the cache blocks it pinned, and the memory
// it read the parts held in no cache block into.
type loan struct {
	c      *cache
	blocks []*block
	own    []byte
}

var loans = sync.Pool{New: func() any { return new(loan) }}

// Release implements backend.Loan: it unpins the blocks, which the cache
// may then evict or, if evicted meanwhile, reuse.
func (l *loan) Release() {
	l.unpin()
	l.c.endLoan()
	*l = loan{blocks: l.blocks[:0]}
	loans.Put(l)
}

func (l *loan) unpin() {
	for _, b := range l.blocks {
		l.c.release(b)
	}
	clear(l.blocks)
	l.blocks, l.own = l.blocks[:0], nil
}

// Lend implements backend.Lender. Data of stored segments is lent from
// the read cache's blocks, fetched into them as ReadAt fetches; holes and
// zero extents are lent as shared zeroes; data still in the journal or in
// a clone's base is read into memory the loan owns. A READ through Lend
// counts for the read-ahead as one through ReadAt.
func (d *Disk) Lend(iov [][]byte, off, n int64) ([][]byte, backend.Loan, error) {
	if err := d.checkRange(off, n); err != nil {
		return iov, nil, err
	}
	d.readAheadAt(off, n)
	l := loans.Get().(*loan)
	l.c = d.cache
	d.cache.beginLoan()
	out, err := d.lend(l, iov, off, n)
	if errors.Is(err, ErrNotFound) && d.cfg.ReadOnly && d.cfg.Snapshot == "" {
		// As in ReadAt: a segment was collected since the map was loaded.
		l.unpin()
		if err = d.refresh(); err == nil {
			out, err = d.lend(l, iov, off, n)
		}
	}
	if err != nil {
		l.Release()
		return iov, nil, err
	}
	return out, l, nil
}

// lend appends the slices holding [off, off+n) to iov, pinning them in l.
func (d *Disk) lend(l *loan, iov [][]byte, off, n int64) ([][]byte, error) {
	pieces, spans, err := d.resolveLend(off, n)
	if err != nil {
		return iov, err
	}
	own := int64(0)
	for _, pc := range pieces {
		if pc.local || pc.base {
			own += pc.m.len
		}
	}
	if own > 0 {
		l.own = make([]byte, own)
		pos := int64(0)
		for i := range pieces {
			if pc := &pieces[i]; pc.local || pc.base {
				pc.dst = l.own[pos : pos+pc.m.len]
				pos += pc.m.len
			}
		}
	}
	pinned := make([][]*block, len(pieces))
	err = d.eachPiece(pieces, func(i int, pc piece) error {
		if pc.local || pc.base {
			return d.readPiece(pc)
		}
		objOff := pc.seg.hdrLen + pc.m.dataOff
		blocks, err := d.pinRemote(pc.seg, objOff, pc.m.len)
		pinned[i] = blocks
		if err == nil && pc.m.whole {
			err = d.checkLent(pc, blocks, objOff)
		}
		return err
	})
	d.release(pieces)
	for _, blocks := range pinned {
		l.blocks = append(l.blocks, blocks...)
	}
	if err != nil {
		return iov, err
	}
	k := 0 // the next piece
	for _, sp := range spans {
		if sp.piece < 0 {
			for z := sp.n; z > 0; z -= min(z, int64(len(lentZeroes))) {
				iov = append(iov, lentZeroes[:min(z, int64(len(lentZeroes)))])
			}
			continue
		}
		pc := pieces[k]
		if pc.local || pc.base {
			iov = append(iov, pc.dst)
		} else {
			for _, b := range pinned[k] {
				iov = append(iov, blockPart(b, pc.seg.hdrLen+pc.m.dataOff, pc.m.len))
			}
		}
		k++
	}
	return iov, nil
}

// checkLent checks the CRC of a whole extent's data in pinned blocks.
func (d *Disk) checkLent(pc piece, blocks []*block, objOff int64) error {
	var crc uint32
	for _, b := range blocks {
		crc = crc32.Update(crc, crcTable, blockPart(b, objOff, pc.m.len))
	}
	return d.checkCRC(pc, crc)
}

// lendSpan is a run of a lent READ: zeroes (piece < 0) or piece number
// piece.
type lendSpan struct {
	n     int64
	piece int
}

// resolveLend is resolve for Lend: the data pieces of [off, off+n), with
// no dst (remote pieces are lent; the caller gives the others memory),
// and the runs of the range in order, holding a reference on each
// journal file it will read.
func (d *Disk) resolveLend(off, n int64) ([]piece, []lendSpan, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.failed != nil:
		return nil, nil, d.failed
	case d.stopped:
		return nil, nil, ErrClosed
	}
	var pieces []piece
	var spans []lendSpan
	gap := func(from, to int64) {
		switch {
		case to <= from:
		case d.clone.base == nil:
			spans = append(spans, lendSpan{n: to - from, piece: -1})
		default:
			spans = append(spans, lendSpan{n: to - from, piece: len(pieces)})
			pieces = append(pieces, piece{m: mapping{off: from, len: to - from}, base: true})
		}
	}
	pos, end := off, off+n
	d.m.each(off, end, func(m mapping) bool {
		gap(pos, m.off)
		pos = m.end()
		if m.kind != kindData {
			spans = append(spans, lendSpan{n: m.len, piece: -1})
			return true
		}
		s := d.segs[m.seg]
		pc := piece{m: m, seg: s}
		if s.jf != nil {
			s.refs++
			pc.local = true
		}
		spans = append(spans, lendSpan{n: m.len, piece: len(pieces)})
		pieces = append(pieces, pc)
		return true
	})
	gap(pos, end)
	return pieces, spans, nil
}
