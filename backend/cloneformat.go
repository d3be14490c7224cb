package backend

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The overlay file of a Clone (docs/clones.md, "Overlay format"):
//
//	[0, 4096)                   header, written once when the overlay is made
//	[4096, mapEnd)              the map: two 4 KiB slots per map page
//	[dataOff, dataOff+size')    data: block i at dataOff + i*blockSize
//
// The data region is sparse: only blocks the clone wrote hold storage, at
// their own export offset plus dataOff, so no allocator, free list or
// compaction is needed, a block never moves, and a TRIM punches a hole.
// dataOff is the end of the map rounded up to 1 MiB, so blocks stay
// aligned for any block size the format allows.
//
// Each map page holds the state of pageBlocks consecutive blocks in two
// slots; a FLUSH writes a changed page into the slot that does not hold
// its current copy, with the next generation and a CRC-32C, and fsyncs
// before it counts. A crash mid-write leaves the other slot intact, and
// opening picks the valid slot with the higher generation.
const (
	overlayMagic   = "NBDD-COW"
	overlayVersion = 1
	headerSize     = 4096
	slotSize       = 4096
	slotHeader     = 16                          // generation u64, page u32, CRC-32C u32
	pageBlocks     = (slotSize - slotHeader) * 4 // 2 bits per block: 16320
	pageWords      = pageBlocks / 32             // in-memory words per page: 510
	dataAlign      = 1 << 20

	// Header field offsets (big-endian, as NBD's own structures).
	hdrVersion     = 8
	hdrFlags       = 12
	hdrBlockShift  = 16
	hdrPathLen     = 20
	hdrSize        = 24
	hdrDataOff     = 32
	hdrBaseModTime = 40
	hdrFingerprint = 48
	hdrPath        = 96
	hdrCRC         = headerSize - 4

	// maxBasePath is the longest base path the header holds.
	maxBasePath = hdrCRC - hdrPath

	// MinCloneBlockSize and MaxCloneBlockSize bound a clone's block size,
	// the unit of copy-up and of its allocation map.
	MinCloneBlockSize = 4 << 10
	MaxCloneBlockSize = 1 << 20
	// DefaultCloneBlockSize is 4 KiB: a 4 KiB random write, what a guest
	// filesystem mostly sends, then never copies anything up from the
	// base (docs/clones.md, "Block size").
	DefaultCloneBlockSize = 4 << 10

	// maxCloneBlocks bounds the blocks of a clone, so that its map,
	// held in memory (2 bits a block), stays within 1 GiB: 16 TiB at
	// 4 KiB blocks.
	maxCloneBlocks = 1 << 32
)

// blockState is what one block of a clone reads as.
type blockState uint8

const (
	// stateBase: the block was never written; it reads from the base.
	stateBase blockState = 0
	// stateData: the block's data is in the overlay.
	stateData blockState = 1
	// stateZero: the block was trimmed or zeroed; it reads as zeroes and
	// masks the base.
	stateZero blockState = 2
	// State 3 is invalid: a map holding it is corrupt.
)

// ErrOverlayCorrupt is returned for an overlay whose header or map cannot
// be trusted.
var ErrOverlayCorrupt = errors.New("backend: overlay corrupt")

// castagnoli is the CRC-32C table (the checksum of ext4, iSCSI and
// btrfs metadata, which x86 computes in hardware).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// overlayHeader is the decoded header of an overlay file.
type overlayHeader struct {
	blockShift  uint
	size        int64
	dataOff     int64
	baseModTime int64 // ns since the epoch; 0: not checked (block devices)
	fingerprint [32]byte
	basePath    string
}

// blocks returns how many blocks the export has.
func (h *overlayHeader) blocks() int64 { return blocksOf(h.size, h.blockShift) }

// blocksOf returns how many blocks of 1<<shift bytes cover size bytes.
func blocksOf(size int64, shift uint) int64 { return (size + 1<<shift - 1) >> shift }

// mapPages returns how many map pages cover n blocks.
func mapPages(n int64) int64 { return (n + pageBlocks - 1) / pageBlocks }

// overlayDataOffset returns where the data of an overlay for n blocks
// starts: after the header and two slots per map page, rounded up to
// dataAlign.
func overlayDataOffset(n int64) int64 {
	end := headerSize + 2*slotSize*mapPages(n)
	return (end + dataAlign - 1) / dataAlign * dataAlign
}

// slotOffset returns the file offset of slot s (0 or 1) of map page p.
func slotOffset(p int64, s int) int64 { return headerSize + (2*p+int64(s))*slotSize }

// encode returns the header's 4096 bytes.
func (h *overlayHeader) encode() []byte {
	b := make([]byte, headerSize)
	copy(b, overlayMagic)
	binary.BigEndian.PutUint32(b[hdrVersion:], overlayVersion)
	binary.BigEndian.PutUint32(b[hdrBlockShift:], uint32(h.blockShift))
	binary.BigEndian.PutUint32(b[hdrPathLen:], uint32(len(h.basePath)))
	binary.BigEndian.PutUint64(b[hdrSize:], uint64(h.size))
	binary.BigEndian.PutUint64(b[hdrDataOff:], uint64(h.dataOff))
	binary.BigEndian.PutUint64(b[hdrBaseModTime:], uint64(h.baseModTime))
	copy(b[hdrFingerprint:], h.fingerprint[:])
	copy(b[hdrPath:], h.basePath)
	binary.BigEndian.PutUint32(b[hdrCRC:], crc32.Checksum(b[:hdrCRC], castagnoli))
	return b
}

// isOverlayHeader reports whether b starts with the overlay magic.
func isOverlayHeader(b []byte) bool { return bytes.HasPrefix(b, []byte(overlayMagic)) }

// decodeHeader parses and checks an overlay header. Every field is
// checked against the bounds the format allows, so that nothing derived
// from it (the map's size above all) can be out of range.
func decodeHeader(b []byte) (overlayHeader, error) {
	corrupt := func(format string, args ...any) (overlayHeader, error) {
		return overlayHeader{}, fmt.Errorf("%w: header: %s", ErrOverlayCorrupt, fmt.Sprintf(format, args...))
	}
	if len(b) < headerSize {
		return corrupt("%d bytes, want %d", len(b), headerSize)
	}
	if !isOverlayHeader(b) {
		return corrupt("no %q magic: not an nbdd overlay", overlayMagic)
	}
	if got, want := binary.BigEndian.Uint32(b[hdrCRC:]), crc32.Checksum(b[:hdrCRC], castagnoli); got != want {
		return corrupt("checksum %#x, want %#x", got, want)
	}
	if v := binary.BigEndian.Uint32(b[hdrVersion:]); v != overlayVersion {
		return corrupt("version %d, this nbdd reads version %d", v, overlayVersion)
	}
	if f := binary.BigEndian.Uint32(b[hdrFlags:]); f != 0 {
		return corrupt("unknown flags %#x", f)
	}
	h := overlayHeader{
		blockShift:  uint(binary.BigEndian.Uint32(b[hdrBlockShift:])),
		size:        int64(binary.BigEndian.Uint64(b[hdrSize:])),
		dataOff:     int64(binary.BigEndian.Uint64(b[hdrDataOff:])),
		baseModTime: int64(binary.BigEndian.Uint64(b[hdrBaseModTime:])),
	}
	copy(h.fingerprint[:], b[hdrFingerprint:])
	if h.blockShift < 12 || h.blockShift > 20 {
		return corrupt("block size 2^%d, want 4 KiB to 1 MiB", h.blockShift)
	}
	if h.size < 0 || h.size > maxCloneBlocks<<h.blockShift {
		return corrupt("size %d out of range", h.size)
	}
	if want := overlayDataOffset(h.blocks()); h.dataOff != want {
		return corrupt("data offset %d, want %d", h.dataOff, want)
	}
	n := binary.BigEndian.Uint32(b[hdrPathLen:])
	if n > maxBasePath {
		return corrupt("base path of %d bytes", n)
	}
	h.basePath = string(b[hdrPath : hdrPath+int(n)])
	if bytes.IndexByte(b[hdrPath:hdrPath+int(n)], 0) >= 0 {
		return corrupt("base path holds a NUL byte")
	}
	return h, nil
}

// slotStatus is what a map slot turned out to hold.
type slotStatus int

const (
	slotEmpty slotStatus = iota // all zeroes: never written
	slotTorn                    // checksum mismatch: a write cut short by a crash
	slotValid
)

// encodeSlot writes the slot of map page p, generation gen, holding
// words (pageWords of them, 32 blocks each) into b (slotSize bytes).
func encodeSlot(b []byte, p int64, gen uint64, words []uint64) {
	_ = b[slotSize-1]
	binary.BigEndian.PutUint64(b[0:], gen)
	binary.BigEndian.PutUint32(b[8:], uint32(p))
	for i, w := range words {
		binary.LittleEndian.PutUint64(b[slotHeader+8*i:], w)
	}
	clear(b[slotHeader+8*len(words):])
	binary.BigEndian.PutUint32(b[12:], slotCRC(b))
}

// slotCRC is the CRC-32C of a slot without its checksum field.
func slotCRC(b []byte) uint32 {
	c := crc32.Checksum(b[:12], castagnoli)
	return crc32.Update(c, castagnoli, b[slotHeader:slotSize])
}

// decodeSlot checks the slot b of map page p, for a map of nblocks
// blocks, and fills words (pageWords) from it when it is valid. A slot
// whose checksum holds but whose content does not (the wrong page, an
// invalid state, a state past the last block) is corrupt: a torn write
// cannot produce it.
func decodeSlot(b []byte, p, nblocks int64, words []uint64) (slotStatus, uint64, error) {
	if len(b) < slotSize {
		return 0, 0, fmt.Errorf("%w: map page %d: short slot", ErrOverlayCorrupt, p)
	}
	b = b[:slotSize]
	if allZero(b) {
		return slotEmpty, 0, nil
	}
	if binary.BigEndian.Uint32(b[12:]) != slotCRC(b) {
		return slotTorn, 0, nil
	}
	gen := binary.BigEndian.Uint64(b[0:])
	if got := int64(binary.BigEndian.Uint32(b[8:])); got != p || gen == 0 {
		return 0, 0, fmt.Errorf("%w: map page %d: slot says page %d, generation %d", ErrOverlayCorrupt, p, got, gen)
	}
	first := p * pageBlocks
	for i := range words {
		w := binary.LittleEndian.Uint64(b[slotHeader+8*i:])
		// A state of 3 is invalid: bit pattern 11 in any pair.
		if w&(w>>1)&0x5555555555555555 != 0 {
			return 0, 0, fmt.Errorf("%w: map page %d: invalid block state", ErrOverlayCorrupt, p)
		}
		if past := first + int64(32*i) + 32 - nblocks; past > 0 && w>>(2*(32-min(past, 32))) != 0 {
			return 0, 0, fmt.Errorf("%w: map page %d: a state past the last block", ErrOverlayCorrupt, p)
		}
		words[i] = w
	}
	return slotValid, gen, nil
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) >= len(zeroBuf) {
		if !bytes.Equal(b[:len(zeroBuf)], zeroBuf[:]) {
			return false
		}
		b = b[len(zeroBuf):]
	}
	return bytes.Equal(b, zeroBuf[:len(b)])
}
