package logdisk

import "github.com/nbdd/nbdd/backend"

var _ backend.CachedReader = (*Disk)(nil)

// ReadCached implements backend.CachedReader: it reads all of p at off
// and reports true when every byte of the range is a hole, a zero extent
// or in a cached block of a stored segment, so the server answers the
// READ on the goroutine that read it. Anything else (a block missing or
// still being fetched, data in the journal or in a clone's base, a CRC
// mismatch) reports false, and the server reads with ReadAt, which
// fetches, waits and reports errors. A hit counts for the read-ahead as
// a READ through ReadAt does.
func (d *Disk) ReadCached(p []byte, off int64) bool {
	if d.checkRange(off, int64(len(p))) != nil {
		return false
	}
	pieces, err := d.resolve(p, off)
	if err != nil {
		return false
	}
	defer d.release(pieces)
	for _, pc := range pieces {
		if pc.local || pc.base || !d.cache.copyCached(pc.seg.seq, pc.seg.hdrLen+pc.m.dataOff, pc.dst) {
			return false
		}
		if pc.m.whole && crc32c(pc.dst) != pc.m.crc {
			return false
		}
	}
	d.readAheadAt(off, int64(len(p)))
	return true
}
