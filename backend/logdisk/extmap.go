package logdisk

import (
	"slices"
	"sort"
)

// mapping says where one run of the export lives: for kindData, len bytes
// at dataOff in the data region of log object seg; for kindZero and
// kindHole nothing (they read as zeroes).
type mapping struct {
	off, len int64
	seg      uint64
	dataOff  int64
	crc      uint32 // CRC-32C of the whole run, when whole
	whole    bool   // the run is an extent as written, so crc holds
	kind     extKind
}

func (m mapping) end() int64 { return m.off + m.len }

// slice returns the part of m in [off, end).
func (m mapping) slice(off, end int64) mapping {
	if off > m.off {
		if m.kind == kindData {
			m.dataOff += off - m.off
		}
		m.len -= off - m.off
		m.off = off
		m.whole = false
	}
	if end < m.end() {
		m.len = end - m.off
		m.whole = false
	}
	return m
}

// adjoins reports whether n continues m so the two can be one entry.
func (m mapping) adjoins(n mapping) bool {
	if m.end() != n.off || m.kind != n.kind {
		return false
	}
	return m.kind != kindData || m.seg == n.seg && m.dataOff+m.len == n.dataOff
}

// extMap maps export offsets to mappings: a sorted list of disjoint
// entries, kept in chunks of at most chunkEntries so that a change costs
// O(chunkEntries) plus a binary search, whatever the number of entries.
// Ranges without an entry have never been written. An extMap is not safe
// for concurrent use.
type extMap struct {
	chunks  [][]mapping // each non-empty and sorted; chunks sorted
	n       int
	scratch []mapping   // set's work space, kept so a set allocates nothing
	repl    [][]mapping // replaceChunks' work space
}

const chunkEntries = 128

// chunkAt returns the index of the first chunk whose last entry ends
// after off (len(m.chunks) if none).
func (m *extMap) chunkAt(off int64) int {
	return sort.Search(len(m.chunks), func(i int) bool {
		c := m.chunks[i]
		return c[len(c)-1].end() > off
	})
}

// set maps [e.off, e.end()) to e, replacing what was there. removed is
// called with each piece of a data entry that e replaces (for live-byte
// counts).
func (m *extMap) set(e mapping, removed func(mapping)) {
	ci := m.chunkAt(e.off)
	if ci == len(m.chunks) {
		if ci > 0 {
			ci--
		} else {
			m.chunks = append(m.chunks, nil)
		}
	}
	// The affected chunks are ci..cj: those holding an entry that overlaps
	// or adjoins e. Neighbour chunks take part so entries can merge.
	if ci > 0 {
		ci--
	}
	cj := ci
	for cj+1 < len(m.chunks) && m.chunks[cj+1][0].off <= e.end() {
		cj++
	}
	out := m.scratch[:0]
	for _, c := range m.chunks[ci : cj+1] {
		for _, x := range c {
			out = m.place(out, x, e, removed)
		}
	}
	out = insertSorted(out, e)
	m.n -= countEntries(m.chunks[ci : cj+1])
	m.n += len(out)
	m.replaceChunks(ci, cj, out)
	m.scratch = out[:0]
}

// place appends x, or the parts of x outside e, to out.
func (m *extMap) place(out []mapping, x, e mapping, removed func(mapping)) []mapping {
	if x.end() <= e.off || x.off >= e.end() {
		return append(out, x)
	}
	if x.off < e.off {
		out = append(out, x.slice(x.off, e.off))
	}
	if removed != nil && x.kind == kindData {
		removed(x.slice(max(x.off, e.off), min(x.end(), e.end())))
	}
	if x.end() > e.end() {
		out = append(out, x.slice(e.end(), x.end()))
	}
	return out
}

// insertSorted inserts e into the sorted, disjoint entries out (which has
// a gap for it) and merges it with neighbours it continues.
func insertSorted(out []mapping, e mapping) []mapping {
	i := sort.Search(len(out), func(i int) bool { return out[i].off >= e.end() })
	out = append(out, mapping{})
	copy(out[i+1:], out[i:])
	out[i] = e
	if i+1 < len(out) && out[i].adjoins(out[i+1]) {
		out[i].len += out[i+1].len
		out[i].whole = false
		out = append(out[:i+1], out[i+2:]...)
	}
	if i > 0 && out[i-1].adjoins(out[i]) {
		out[i-1].len += out[i].len
		out[i-1].whole = false
		out = append(out[:i], out[i+1:]...)
	}
	return out
}

func countEntries(chunks [][]mapping) int {
	n := 0
	for _, c := range chunks {
		n += len(c)
	}
	return n
}

// replaceChunks puts entries in place of chunks ci..cj, split into chunks
// of at most chunkEntries (half full when split, so the next inserts do not
// split again at once). The replaced chunks' arrays are filled again and
// the chunk list is changed in place: a random WRITE's map update then
// allocates nothing and copies no more than the chunks it changes.
func (m *extMap) replaceChunks(ci, cj int, entries []mapping) {
	old := m.chunks[ci : cj+1]
	repl := m.repl[:0]
	for i := 0; len(entries) > 0; i++ {
		k := len(entries)
		if k > chunkEntries {
			k = chunkEntries / 2
		}
		var c []mapping
		if i < len(old) && cap(old[i]) >= k {
			c = old[i][:0]
		} else {
			c = make([]mapping, 0, chunkEntries)
		}
		repl = append(repl, append(c, entries[:k]...))
		entries = entries[k:]
	}
	m.chunks = slices.Replace(m.chunks, ci, cj+1, repl...)
	clear(repl)
	m.repl = repl[:0]
}

// each calls fn for each entry overlapping [off, end), clipped to it, in
// order, until fn returns false. Gaps (never written) are not reported.
func (m *extMap) each(off, end int64, fn func(mapping) bool) {
	for ci := m.chunkAt(off); ci < len(m.chunks); ci++ {
		c := m.chunks[ci]
		i := sort.Search(len(c), func(i int) bool { return c[i].end() > off })
		for ; i < len(c); i++ {
			if c[i].off >= end {
				return
			}
			if !fn(c[i].slice(max(off, c[i].off), min(end, c[i].end()))) {
				return
			}
		}
	}
}

// all calls fn for every entry in order.
func (m *extMap) all(fn func(mapping)) {
	for _, c := range m.chunks {
		for _, e := range c {
			fn(e)
		}
	}
}

// clone returns a copy that shares nothing with m.
func (m *extMap) clone() *extMap {
	c := &extMap{chunks: make([][]mapping, len(m.chunks)), n: m.n}
	for i, ch := range m.chunks {
		c.chunks[i] = append([]mapping(nil), ch...)
	}
	return c
}

// load replaces the map's contents with sorted, disjoint entries.
func (m *extMap) load(entries []mapping) {
	m.chunks, m.n = nil, len(entries)
	for len(entries) > 0 {
		k := min(len(entries), chunkEntries*3/4)
		m.chunks = append(m.chunks, append(make([]mapping, 0, chunkEntries), entries[:k]...))
		entries = entries[k:]
	}
}
