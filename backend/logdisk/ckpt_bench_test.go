package logdisk

import "testing"

// benchCheckpoint is a checkpoint shaped as one of an 8 GiB image half
// written by nbdcopy from nbdkit's sparse-random plugin: 263 segments of
// 16 MiB and 16,021 extents.
func benchCheckpoint() (b []byte, size int64) {
	const nseg, next = 263, 16021
	size = 8 << 30
	c := &checkpoint{Seq: 300, Epoch: Epoch{N: 3, Nonce: 7}, Closed: true, Size: size}
	for i := range nseg {
		c.Segs = append(c.Segs, segRef{Seq: uint64(10 + i), HdrLen: 4096, DataLen: 16 << 20})
	}
	stride := size / next
	for i := range next {
		s := c.Segs[i*nseg/next]
		c.Extents = append(c.Extents, mapping{
			off: int64(i) * stride, len: stride / 2, seg: s.Seq,
			dataOff: int64(i%61) * (256 << 10), crc: uint32(i), whole: true, kind: kindData,
		})
	}
	return c.appendBinary(nil), size
}

// BenchmarkOpenCheckpoint is the CPU an open spends on its checkpoint:
// decoding it and building the map from it.
func BenchmarkOpenCheckpoint(b *testing.B) {
	buf, size := benchCheckpoint()
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		c, err := decodeCheckpoint(buf, size)
		if err != nil {
			b.Fatal(err)
		}
		d := &Disk{segs: map[uint64]*segment{}}
		d.applyCheckpoint(&loadState{ckpt: c, base: c.Seq})
	}
}
