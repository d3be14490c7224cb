//go:build linux

package backend

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOverlayHeaderRoundTrip: a header decodes to what was encoded, and
// each field out of its bounds, a bad checksum or a foreign magic is
// refused as corrupt.
func TestOverlayHeaderRoundTrip(t *testing.T) {
	h := overlayHeader{blockShift: 12, size: 1<<30 + 512, baseModTime: 1234567890, basePath: "../images/base.raw"}
	h.dataOff = overlayDataOffset(h.blocks())
	h.fingerprint[3] = 9
	got, err := decodeHeader(h.encode())
	require.NoError(t, err)
	require.Equal(t, h, got)
	require.EqualValues(t, 1<<20, h.dataOff, "1 GiB at 4 KiB: 17 map pages, 136 KiB, rounded up to 1 MiB")

	for name, mutate := range map[string]func(*overlayHeader){
		"block size 2 KiB": func(h *overlayHeader) { h.blockShift = 11 },
		"block size 2 MiB": func(h *overlayHeader) { h.blockShift = 21 },
		"negative size":    func(h *overlayHeader) { h.size = -1 },
		"too many blocks":  func(h *overlayHeader) { h.size = maxCloneBlocks<<12 + 1 },
		"data offset":      func(h *overlayHeader) { h.dataOff += 4096 },
	} {
		bad := h
		mutate(&bad)
		_, err := decodeHeader(bad.encode())
		require.ErrorIs(t, err, ErrOverlayCorrupt, name)
	}
	b := h.encode()
	b[100] ^= 1
	_, err = decodeHeader(b)
	require.ErrorIs(t, err, ErrOverlayCorrupt, "checksum")
	_, err = decodeHeader(bytes.Repeat([]byte{0xeb}, headerSize))
	require.ErrorIs(t, err, ErrOverlayCorrupt, "a raw image is not an overlay")
}

// TestDataBits: dataBits picks exactly the blocks in stateData.
func TestDataBits(t *testing.T) {
	var m stateMap = newStateMap(64)
	m.set(0, 3, stateData)
	m.set(3, 5, stateZero)
	m.set(31, 32, stateData)
	require.Equal(t, uint64(0b111|1<<31), dataBits(m[0].Load()))
}

// TestStateMapRuns: runEnd finds where a run of equal states ends,
// across words.
func TestStateMapRuns(t *testing.T) {
	m := newStateMap(200)
	m.set(10, 100, stateData)
	m.set(100, 101, stateZero)
	for _, c := range []struct{ lo, hi, want int64 }{
		{0, 200, 10}, {10, 200, 100}, {40, 200, 100}, {40, 64, 64}, {100, 200, 101}, {101, 200, 200}, {101, 150, 150},
		{199, 200, 200}, {63, 64, 64}, {31, 100, 32 + 68},
	} {
		require.Equal(t, c.want, m.runEnd(c.lo, c.hi, m.get(c.lo)), "runEnd(%d, %d)", c.lo, c.hi)
	}
	// A run of the state the caller saw, not of the state block lo holds
	// now: a caller that saw block 10 as base (a write has made it data
	// since) gets a run of one block, not the 90 blocks of data after it.
	require.EqualValues(t, 11, m.runEnd(10, 200, stateBase))
	require.EqualValues(t, 200, m.runEnd(100, 200, stateBase), "block 100 counts as seen; 101 on are base")
	require.EqualValues(t, 90, m.count(200, stateData))
	require.True(t, m.all(10, 100, stateData))
	require.False(t, m.all(10, 101, stateData))
}

// FuzzOverlayDecode feeds arbitrary bytes to the overlay's decoders, as
// an overlay file's header and map: they must refuse what is wrong with
// ErrOverlayCorrupt, never panic, and never allocate for a map the file
// cannot hold. What they accept must only hold valid states and encode
// back to slots that decode the same.
func FuzzOverlayDecode(f *testing.F) {
	f.Add(fuzzSeedOverlay(f, false))
	f.Add(fuzzSeedOverlay(f, true))
	f.Add(bytes.Repeat([]byte{0}, headerSize+slotSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		words := make([]uint64, pageWords)
		if len(data) >= slotSize {
			st, _, err := decodeSlot(data[len(data)-slotSize:], 0, 3*pageBlocks, words)
			if err != nil {
				require.ErrorIs(t, err, ErrOverlayCorrupt)
			} else if st == slotValid {
				requireValidStates(t, words)
			}
		}
		h, err := decodeHeader(data)
		if err != nil {
			require.ErrorIs(t, err, ErrOverlayCorrupt)
			return
		}
		// The store reports the size the header needs only when the
		// bytes hold the map; otherwise readHeader refuses it before the
		// map is allocated, as it does for a short file.
		size := h.dataOff + h.blocks()<<h.blockShift
		if mapEnd := slotOffset(mapPages(h.blocks()), 0); int64(len(data)) < mapEnd {
			size = int64(len(data))
		}
		d := newSimDisk(max(size, int64(len(data))))
		put(d.sectors, 0, int64(len(data)), data)
		d.size = size
		c, err := loadOverlay(d, nil, &h, true)
		if err != nil {
			require.ErrorIs(t, err, ErrOverlayCorrupt)
			return
		}
		for p := range int64(len(c.slots)) {
			c.states.page(p, words)
			requireValidStates(t, words)
			slot := make([]byte, slotSize)
			encodeSlot(slot, p, c.slots[p].gen+1, words)
			again := make([]uint64, pageWords)
			st, _, err := decodeSlot(slot, p, c.nblocks, again)
			require.NoError(t, err)
			require.Equal(t, slotValid, st)
			require.Equal(t, words, again)
		}
	})
}

func requireValidStates(t *testing.T, words []uint64) {
	for _, w := range words {
		require.Zero(t, w&(w>>1)&0x5555555555555555, "state 3 accepted")
	}
}

// fuzzSeedOverlay returns the header and map of a small overlay with a
// page written by a flush, and, if torn, one slot torn.
func fuzzSeedOverlay(f *testing.F, torn bool) []byte {
	base, err := NewCloneBase(NewMemory(3*pageBlocks*4096/2), "base.raw", time.Time{})
	require.NoError(f, err)
	h, err := newHeader(base, 4096)
	require.NoError(f, err)
	d := newSimDisk(h.dataOff + h.blocks()<<h.blockShift)
	put(d.sectors, 0, headerSize, h.encode())
	c, err := loadOverlay(d, base.b, &h, false)
	require.NoError(f, err)
	for _, off := range []int64{0, 5 << 20, int64(pageBlocks) * 4096} {
		_, err = c.WriteAt([]byte("seed"), off)
		require.NoError(f, err)
		require.NoError(f, c.Trim(off+8192, 8192))
		require.NoError(f, c.Sync())
	}
	out := make([]byte, slotOffset(mapPages(h.blocks()), 0))
	_, err = d.ReadAt(out, 0)
	require.NoError(f, err)
	if torn {
		out[slotOffset(0, int(c.slots[0].cur))+100] ^= 0xff
	}
	return out
}
