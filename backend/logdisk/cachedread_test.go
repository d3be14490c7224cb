package logdisk

import (
	"slices"
	"testing"
)

// TestReadCached: a READ whose blocks are cached is answered without a
// GET; one whose blocks are not, or whose data is still in the journal,
// is refused without a GET, so the server reads it with ReadAt; a hole is
// answered as zeroes.
func TestReadCached(t *testing.T) {
	st := NewMemStore()
	model := writtenImage(t, st, 4<<20, fill64(1<<20, 5))
	d := openDisk(t, readOnlyConfig(t, st))
	buf := make([]byte, 4096)
	if d.ReadCached(buf, 64<<10) {
		t.Fatal("ReadCached of a range never read reported a hit")
	}
	if st := d.Stats(); st.Gets != 0 {
		t.Fatalf("ReadCached made %d GETs, want none", st.Gets)
	}
	if _, err := d.ReadAt(buf, 64<<10); err != nil {
		t.Fatal(err)
	}
	gets := d.Stats().Gets
	clear(buf)
	if !d.ReadCached(buf, 64<<10) {
		t.Fatal("ReadCached of a range just read reported a miss")
	}
	requireEqual(t, buf, model[64<<10:64<<10+4096], "cached read")
	if !d.ReadCached(buf, 2<<20) {
		t.Fatal("ReadCached of a hole reported a miss")
	}
	requireEqual(t, buf, make([]byte, 4096), "hole")
	if got := d.Stats().Gets; got != gets {
		t.Fatalf("cached reads made %d GETs, want none", got-gets)
	}

	// A writer's data still in its journal is read with ReadAt.
	w := openDisk(t, testConfig(t, st))
	mustWrite(t, w, model[:4096], 3<<20)
	if w.ReadCached(buf, 3<<20) {
		t.Fatal("ReadCached of data written and not fetched reported a hit")
	}
}

// TestReadUnitOneGet: a miss whose fetch unit holds a cached block
// between missing ones fetches the unit with one GET, reading the cached
// block's bytes again and leaving its buffer as it was.
func TestReadUnitOneGet(t *testing.T) {
	st := NewMemStore()
	model := writtenImage(t, st, 1<<20, fill64(1<<20, 7))
	d := openDisk(t, readOnlyConfig(t, st))
	buf := make([]byte, 4096)
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	c := d.cache
	c.mu.Lock()
	var keys []blockKey
	for _, r := range c.blocks {
		for _, b := range r.blocks {
			if b != nil {
				keys = append(keys, b.key)
			}
		}
	}
	slices.SortFunc(keys, func(a, b blockKey) int { return int(a.idx - b.idx) })
	if len(keys) < 3 {
		c.mu.Unlock()
		t.Fatalf("a miss cached %d blocks, want a unit of %d", len(keys), fetchUnit/cacheBlock)
	}
	keep := keys[len(keys)/2]
	for _, k := range keys {
		if k != keep {
			c.evictLocked(c.blocks.get(k))
		}
	}
	c.mu.Unlock()

	before := d.Stats()
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, buf, model[:4096], "read")
	if got := d.Stats().Gets - before.Gets; got != 1 {
		t.Fatalf("the unit around a cached block took %d GETs, want 1", got)
	}
	// every byte of the unit, the kept block's too, reads as written
	unit := make([]byte, fetchUnit/2)
	if !d.ReadCached(unit, 0) {
		t.Fatal("the unit is not cached after its fetch")
	}
	requireEqual(t, unit, model[:len(unit)], "unit")
}
