package logdisk

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// checkpoint is the map as it stood after log object Seq, so that a
// reader needs only the log objects after it.
//
//	 0 magic "NBDDCKP1"
//	 8 version u32, flags u32 (1: the image was closed cleanly at Seq)
//	16 seq u64
//	24 epoch u64, 32 nonce u64 (the highest epoch seen up to seq)
//	40 export size u64
//	48 segment count u32, 4 reserved
//	56 extent count u64
//	64 segments, 24 bytes each: seq u64, header length u32, 4 reserved, data length u64
//	.. extents, 40 bytes each: off u64, len u64, seg u64, dataOff u64, crc u32, kind u8, whole u8, 2 reserved
//	.. CRC-32C u32 of everything before it
type checkpoint struct {
	Seq     uint64
	Epoch   Epoch
	Closed  bool
	Size    int64
	Segs    []segRef
	Extents []mapping
}

// segRef is what a reader must know of a segment to read it.
type segRef struct {
	Seq     uint64
	HdrLen  int64
	DataLen int64
}

const (
	ckptMagic      = "NBDDCKP1"
	ckptFixedSize  = 64
	ckptSegSize    = 24
	ckptExtentSize = 40
	ckptVersion    = 1
	maxCkptEntries = 1 << 30
)

func (c *checkpoint) encodedSize() int {
	return ckptFixedSize + len(c.Segs)*ckptSegSize + len(c.Extents)*ckptExtentSize + 4
}

func (c *checkpoint) appendBinary(b []byte) []byte {
	start := len(b)
	var flags uint32
	if c.Closed {
		flags = 1
	}
	b = append(b, ckptMagic...)
	b = binary.BigEndian.AppendUint32(b, ckptVersion)
	b = binary.BigEndian.AppendUint32(b, flags)
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = binary.BigEndian.AppendUint64(b, c.Epoch.N)
	b = binary.BigEndian.AppendUint64(b, c.Epoch.Nonce)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Size))
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.Segs)))
	b = append(b, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(len(c.Extents)))
	for _, s := range c.Segs {
		b = binary.BigEndian.AppendUint64(b, s.Seq)
		b = binary.BigEndian.AppendUint32(b, uint32(s.HdrLen))
		b = append(b, 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint64(b, uint64(s.DataLen))
	}
	for _, e := range c.Extents {
		b = binary.BigEndian.AppendUint64(b, uint64(e.off))
		b = binary.BigEndian.AppendUint64(b, uint64(e.len))
		b = binary.BigEndian.AppendUint64(b, e.seg)
		b = binary.BigEndian.AppendUint64(b, uint64(e.dataOff))
		b = binary.BigEndian.AppendUint32(b, e.crc)
		whole := byte(0)
		if e.whole {
			whole = 1
		}
		b = append(b, byte(e.kind), whole, 0, 0)
	}
	return binary.BigEndian.AppendUint32(b, crc32c(b[start:]))
}

// decodeCheckpoint parses and checks a checkpoint of an export of size
// bytes: extents sorted, disjoint, inside the export, and data extents
// inside segments it lists.
func decodeCheckpoint(b []byte, size int64) (*checkpoint, error) {
	if len(b) < ckptFixedSize+4 || string(b[:8]) != ckptMagic {
		return nil, corrupt("checkpoint: bad magic")
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != ckptVersion {
		return nil, fmt.Errorf("checkpoint: version %d is not supported", v)
	}
	nseg, next := uint64(binary.BigEndian.Uint32(b[48:])), binary.BigEndian.Uint64(b[56:])
	if nseg > maxCkptEntries || next > maxCkptEntries ||
		uint64(len(b)) != ckptFixedSize+nseg*ckptSegSize+next*ckptExtentSize+4 {
		return nil, corrupt("checkpoint: %d segments and %d extents in %d bytes", nseg, next, len(b))
	}
	n := len(b)
	if got, want := crc32c(b[:n-4]), binary.BigEndian.Uint32(b[n-4:]); got != want {
		return nil, corrupt("checkpoint: CRC %08x, want %08x", got, want)
	}
	c := &checkpoint{
		Closed: binary.BigEndian.Uint32(b[12:])&1 != 0,
		Seq:    binary.BigEndian.Uint64(b[16:]),
		Epoch:  Epoch{binary.BigEndian.Uint64(b[24:]), binary.BigEndian.Uint64(b[32:])},
		Size:   int64(binary.BigEndian.Uint64(b[40:])),
	}
	if c.Size != size {
		return nil, corrupt("checkpoint %d: size %d, image size %d", c.Seq, c.Size, size)
	}
	segs, err := decodeSegRefs(b[ckptFixedSize:], int(nseg), c.Seq)
	if err != nil {
		return nil, err
	}
	c.Segs = segs
	c.Extents, err = decodeCkptExtents(b[ckptFixedSize+int(nseg)*ckptSegSize:], int(next), size, segs)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", c.Seq, err)
	}
	return c, nil
}

func decodeSegRefs(b []byte, n int, ckptSeq uint64) ([]segRef, error) {
	segs := make([]segRef, n)
	for i := range segs {
		p := b[i*ckptSegSize:]
		s := segRef{
			Seq:     binary.BigEndian.Uint64(p),
			HdrLen:  int64(binary.BigEndian.Uint32(p[8:])),
			DataLen: int64(binary.BigEndian.Uint64(p[16:])),
		}
		if i > 0 && s.Seq <= segs[i-1].Seq || s.Seq > ckptSeq || s.HdrLen < logFixedSize+4 ||
			s.DataLen < 0 || s.DataLen > maxSegmentData {
			return nil, corrupt("checkpoint %d: segment entry %d %+v", ckptSeq, i, s)
		}
		segs[i] = s
	}
	return segs, nil
}

func decodeCkptExtents(b []byte, n int, size int64, segs []segRef) ([]mapping, error) {
	ext := make([]mapping, n)
	prevEnd := int64(0)
	j := 0 // the segment of the extent before: the next is often in it too
	for i := range ext {
		p := b[i*ckptExtentSize:]
		e := mapping{
			off:     int64(binary.BigEndian.Uint64(p)),
			len:     int64(binary.BigEndian.Uint64(p[8:])),
			seg:     binary.BigEndian.Uint64(p[16:]),
			dataOff: int64(binary.BigEndian.Uint64(p[24:])),
			crc:     binary.BigEndian.Uint32(p[32:]),
			kind:    extKind(p[36]),
			whole:   p[37] == 1,
		}
		le := logExtent{Off: e.off, Len: e.len, DataOff: e.dataOff, Kind: e.kind}
		dataLen := int64(0)
		if e.kind == kindData {
			if j >= len(segs) || segs[j].Seq != e.seg {
				j = findSeg(segs, e.seg)
			}
			if j < 0 {
				return nil, corrupt("extent %d names segment %d, which is not listed", i, e.seg)
			}
			dataLen = segs[j].DataLen
		}
		if err := le.check(size, dataLen); err != nil {
			return nil, fmt.Errorf("extent %d: %w", i, err)
		}
		if e.off < prevEnd {
			return nil, corrupt("extent %d at %d overlaps the one before (ends %d)", i, e.off, prevEnd)
		}
		prevEnd = e.end()
		ext[i] = e
	}
	return ext, nil
}

// findSeg returns the index of seq in the sorted segs, or -1.
func findSeg(segs []segRef, seq uint64) int {
	lo, hi := 0, len(segs)
	for lo < hi {
		mid := (lo + hi) / 2
		switch {
		case segs[mid].Seq == seq:
			return mid
		case segs[mid].Seq < seq:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return -1
}

func sortSegRefs(s []segRef) {
	sort.Slice(s, func(i, j int) bool { return s[i].Seq < s[j].Seq })
}
