//go:build linux

package backend

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The crash tests run a clone on a simulated disk that logs every write
// and sync, then rebuild the disk as a crash after each logged operation
// could have left it: everything before the last sync (and every FUA
// write) on disk, and of the writes since, any subset, some torn at a
// sector boundary. Each such disk must open, and every sector must read
// a version it held since it was last acknowledged (by a FLUSH or a FUA
// write) and no later than the operation the crash interrupted: flushed
// data is never lost, and the map never points at data never written.

const sectorSize = 512

type diskOpKind int

const (
	opWrite diskOpKind = iota // pwrite: on disk at the next sync, or maybe before
	opSync                    // fdatasync
	opFUA                     // a write durable when it returns
)

// diskOp is one logged operation; data nil means n zero bytes (a punch).
type diskOp struct {
	kind diskOpKind
	off  int64
	n    int64
	data []byte
}

// simDisk is an overlayStore in memory, sparse by sector.
type simDisk struct {
	onSync  func() // run once, just after the next Sync
	onWrite func() // run once, at the next WriteAt, before it lands
	mu      sync.Mutex
	size    int64
	sectors map[int64][]byte
	initial map[int64][]byte // the content when logging started
	log     []diskOp
}

func newSimDisk(size int64) *simDisk {
	return &simDisk{size: size, sectors: map[int64][]byte{}}
}

func (d *simDisk) startLog() {
	d.initial = maps.Clone(d.sectors)
	for k, v := range d.initial {
		d.initial[k] = bytes.Clone(v)
	}
	d.log = nil
}

func (d *simDisk) Size() (int64, error) { return d.size, nil }
func (d *simDisk) Close() error         { return nil }

func (d *simDisk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := int(max(0, min(int64(len(p)), d.size-off)))
	for i := 0; i < n; {
		pos := off + int64(i)
		s, o := pos/sectorSize, int(pos%sectorSize)
		k := min(n-i, sectorSize-o)
		if b, ok := d.sectors[s]; ok {
			copy(p[i:i+k], b[o:])
		} else {
			clear(p[i : i+k])
		}
		i += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// put writes data (nil: n zeroes) at off into sectors.
func put(sectors map[int64][]byte, off, n int64, data []byte) {
	for i := int64(0); i < n; {
		pos := off + i
		s, o := pos/sectorSize, pos%sectorSize
		k := min(n-i, sectorSize-o)
		b, ok := sectors[s]
		if !ok {
			if data == nil {
				i += k
				continue
			}
			b = make([]byte, sectorSize)
		} else {
			b = bytes.Clone(b)
		}
		if data == nil {
			clear(b[o : o+k])
		} else {
			copy(b[o:o+k], data[i:i+k])
		}
		sectors[s] = b
		i += k
	}
}

func (d *simDisk) record(kind diskOpKind, off, n int64, data []byte) error {
	if off < 0 || off+n > d.size {
		return fmt.Errorf("sim disk: %d bytes at %d: %w", n, off, ErrOutOfRange)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if data != nil {
		data = bytes.Clone(data)
	}
	put(d.sectors, off, n, data)
	d.log = append(d.log, diskOp{kind: kind, off: off, n: n, data: data})
	return nil
}

func (d *simDisk) WriteAt(p []byte, off int64) (int, error) {
	if f := d.onWrite; f != nil {
		d.onWrite = nil
		f()
	}
	return len(p), d.record(opWrite, off, int64(len(p)), p)
}

func (d *simDisk) WriteAtFUA(p []byte, off int64) (int, error) {
	return len(p), d.record(opFUA, off, int64(len(p)), p)
}

func (d *simDisk) Sync() error {
	d.mu.Lock()
	d.log = append(d.log, diskOp{kind: opSync})
	d.mu.Unlock()
	if f := d.onSync; f != nil {
		d.onSync = nil
		f()
	}
	return nil
}

func (d *simDisk) Trim(off, n int64) error { return d.record(opWrite, off, n, nil) }
func (d *simDisk) WriteZeroes(off, n int64, noHole, fast bool) error {
	return d.record(opWrite, off, n, nil)
}

// crashed returns the disk as a crash after the first k logged operations
// may leave it. choice(i) says what became of pending write i: 0 lost,
// 1 written, 2 torn (its first half of sectors written).
func (d *simDisk) crashed(k int, choice func(i int) int) *simDisk {
	lastSync := -1
	for i := range k {
		if d.log[i].kind == opSync {
			lastSync = i
		}
	}
	c := newSimDisk(d.size)
	c.sectors = maps.Clone(d.initial)
	for i, op := range d.log[:k] {
		if op.kind == opSync {
			continue
		}
		n := op.n
		if i > lastSync && op.kind == opWrite {
			switch choice(i) {
			case 0:
				continue
			case 2:
				first, last := op.off/sectorSize, (op.off+op.n-1)/sectorSize
				cut := (first + (last-first+1)/2) * sectorSize
				if cut <= op.off {
					continue
				}
				n = cut - op.off
			}
		}
		put(c.sectors, op.off, n, op.data)
	}
	return c
}

// pending returns the indexes of the writes not covered by a sync among
// the first k logged operations.
func (d *simDisk) pending(k int) []int {
	var p []int
	for i := range k {
		switch d.log[i].kind {
		case opSync:
			p = p[:0]
		case opWrite:
			p = append(p, i)
		}
	}
	return p
}

// sectorHist is what one sector of the export held over a scenario:
// its versions, and the acknowledgements that made part of one durable.
type sectorHist struct {
	vers  [][]byte
	verOp []int // the client operation that made each version; -1: the base
	acks  []sectorAck
}

// sectorAck says that bytes [from, to) of version ver are durable since
// client operation op.
type sectorAck struct{ op, ver, from, to int }

// crashScenario drives a clone on a simDisk and keeps each sector's
// history.
type crashScenario struct {
	t     *testing.T
	base  *CloneBase
	disk  *simDisk
	c     *Clone
	size  int64
	ops   [][2]int // log range of each client operation
	hist  map[int64]*sectorHist
	names []string
}

func newCrashScenario(t *testing.T, size int64, blockSize int, hot []int64) *crashScenario {
	mem := NewMemory(size)
	for i, off := range hot {
		_, err := mem.WriteAt(randBytes(16*blockSize, uint64(i)), min(off, size-int64(16*blockSize)))
		require.NoError(t, err)
	}
	base, err := NewCloneBase(mem, "base.raw", time.Time{})
	require.NoError(t, err)
	h, err := newHeader(base, blockSize)
	require.NoError(t, err)
	h.basePath = "base.raw"
	disk := newSimDisk(h.dataOff + h.blocks()<<h.blockShift)
	put(disk.sectors, 0, headerSize, h.encode())
	disk.startLog()
	c, err := openCloneOn(disk, base, false)
	require.NoError(t, err)
	return &crashScenario{t: t, base: base, disk: disk, c: c, size: size, hist: map[int64]*sectorHist{}}
}

// sector returns the history of sector s, starting it from the base.
func (sc *crashScenario) sector(s int64) *sectorHist {
	h, ok := sc.hist[s]
	if !ok {
		b := make([]byte, min(sectorSize, sc.size-s*sectorSize))
		_, err := sc.base.b.ReadAt(b, s*sectorSize)
		require.NoError(sc.t, err)
		h = &sectorHist{vers: [][]byte{b}, verOp: []int{-1}}
		sc.hist[s] = h
	}
	return h
}

// change records that [off, off+n) now holds data (nil: zeroes).
func (sc *crashScenario) change(off, n int64, data []byte) {
	op := len(sc.ops)
	for pos := off; pos < off+n; {
		s := pos / sectorSize
		h := sc.sector(s)
		v := bytes.Clone(h.vers[len(h.vers)-1])
		lo, hi := pos-s*sectorSize, min(off+n-s*sectorSize, int64(len(v)))
		if data == nil {
			clear(v[lo:hi])
		} else {
			copy(v[lo:hi], data[pos-off:])
		}
		h.vers, h.verOp = append(h.vers, v), append(h.verOp, op)
		pos = s*sectorSize + hi
	}
}

// ack records that the bytes of [off, off+n) (all, if n < 0) are
// durable as they are now.
func (sc *crashScenario) ack(off, n int64) {
	op := len(sc.ops)
	for s, h := range sc.hist {
		start := s * sectorSize
		from, to := int64(0), int64(len(h.vers[0]))
		if n >= 0 {
			from, to = max(from, off-start), min(to, off+n-start)
		}
		if from < to {
			h.acks = append(h.acks, sectorAck{op: op, ver: len(h.vers) - 1, from: int(from), to: int(to)})
		}
	}
}

// do runs one client operation and logs its range of disk operations.
func (sc *crashScenario) do(name string, f func() error) {
	start := len(sc.disk.log)
	require.NoError(sc.t, f(), name)
	sc.ops = append(sc.ops, [2]int{start, len(sc.disk.log)})
	sc.names = append(sc.names, name)
}

func (sc *crashScenario) write(off int64, p []byte, fua bool) {
	sc.change(off, int64(len(p)), p)
	if fua {
		sc.ack(off, int64(len(p)))
		sc.do(fmt.Sprintf("fua write %d+%d", off, len(p)), func() error { _, err := sc.c.WriteAtFUA(p, off); return err })
		return
	}
	sc.do(fmt.Sprintf("write %d+%d", off, len(p)), func() error { _, err := sc.c.WriteAt(p, off); return err })
}

// writeRacing writes p at off while a flush runs, as another
// connection's would: the flush runs as the write's data is about to
// reach the overlay, and must not publish the write before its data.
func (sc *crashScenario) writeRacing(off int64, p []byte) {
	sc.ack(0, -1)
	sc.change(off, int64(len(p)), p)
	sc.disk.onWrite = func() { require.NoError(sc.t, sc.c.Sync()) }
	sc.do(fmt.Sprintf("write %d+%d racing a flush", off, len(p)), func() error { _, err := sc.c.WriteAt(p, off); return err })
	sc.disk.onWrite = nil
}

func (sc *crashScenario) trim(off, n int64) {
	if lo, hi := sc.c.wholeBlocks(off, n); lo < hi {
		sc.change(sc.c.blockStart(lo), min(sc.c.blockStart(hi), sc.size)-sc.c.blockStart(lo), nil)
	}
	sc.do(fmt.Sprintf("trim %d+%d", off, n), func() error { return sc.c.Trim(off, n) })
}

func (sc *crashScenario) zero(off, n int64, noHole bool) {
	sc.change(off, n, nil)
	sc.do(fmt.Sprintf("zero %d+%d", off, n), func() error { return sc.c.WriteZeroes(off, n, noHole, false) })
}

func (sc *crashScenario) flush() {
	sc.ack(0, -1)
	sc.do("flush", sc.c.Sync)
}

// flushRacing flushes while a write of p at off runs, as another
// connection's would: it lands just after the flush's first fdatasync,
// so the flush need not cover it, but must not publish it either.
func (sc *crashScenario) flushRacing(off int64, p []byte) {
	sc.ack(0, -1)
	sc.change(off, int64(len(p)), p)
	sc.disk.onSync = func() {
		_, err := sc.c.WriteAt(p, off)
		require.NoError(sc.t, err)
	}
	sc.do(fmt.Sprintf("flush racing a write %d+%d", off, len(p)), sc.c.Sync)
}

// verifyAll rebuilds the disk at every crash point, under several fates
// of its pending writes, and checks each.
func (sc *crashScenario) verifyAll(r *rand.Rand) int {
	checked := 0
	for k := 0; k <= len(sc.disk.log); k++ {
		pend := sc.disk.pending(k)
		for _, choice := range fates(pend, r) {
			sc.verify(k, sc.disk.crashed(k, choice))
			checked++
		}
	}
	return checked
}

// fates returns ways the pending writes may have ended: all of them when
// there are few, else all lost, all written and random mixes.
func fates(pend []int, r *rand.Rand) []func(int) int {
	idx := map[int]int{}
	for j, i := range pend {
		idx[i] = j
	}
	var out []func(int) int
	vec := func(v []int) func(int) int { return func(i int) int { return v[idx[i]] } }
	if len(pend) <= 3 {
		total := 1
		for range pend {
			total *= 3
		}
		for code := range total {
			v := make([]int, len(pend))
			for j, c := 0, code; j < len(v); j, c = j+1, c/3 {
				v[j] = c % 3
			}
			out = append(out, vec(v))
		}
		return out
	}
	all := func(x int) []int {
		v := make([]int, len(pend))
		for j := range v {
			v[j] = x
		}
		return v
	}
	out = append(out, vec(all(0)), vec(all(1)))
	for range 16 {
		v := make([]int, len(pend))
		for j := range v {
			v[j] = r.IntN(3)
		}
		out = append(out, vec(v))
	}
	return out
}

// verify opens the crashed disk d (k operations in) and checks every
// sector the scenario touched.
func (sc *crashScenario) verify(k int, d *simDisk) {
	t := sc.t
	c, err := openCloneOn(d, sc.base, true)
	require.NoError(t, err, "crash after disk op %d: the overlay does not open", k)
	jp := sort.Search(len(sc.ops), func(j int) bool { return sc.ops[j][1] > k })
	started := jp < len(sc.ops) && sc.ops[jp][0] < k
	got := make([]byte, sectorSize)
	for s, h := range sc.hist {
		hi := 0
		for v, op := range h.verOp {
			if op < jp || op == jp && started {
				hi = v
			}
		}
		b := got[:len(h.vers[0])]
		_, err := c.ReadAt(b, s*sectorSize)
		require.NoError(t, err)
		if i, lo := h.check(b, jp, hi); i >= 0 {
			op := "after the last operation"
			if jp < len(sc.ops) {
				op = "in " + sc.names[jp]
			}
			t.Fatalf("crash after disk op %d (%s): byte %d reads %#x, a value it never held between its acknowledgement (version %d) and the crash (version %d)",
				k, op, s*sectorSize+int64(i), b[i], lo, hi)
		}
	}
}

// check returns the first byte of b that holds none of the values that
// byte had from its last acknowledgement before client operation jp to
// version hi, and that acknowledged version; -1 if every byte is one of
// them. Bytes are checked one by one: a write that only partly covers a
// sector may reach the disk while an earlier one to the rest of the
// sector does not.
func (h *sectorHist) check(b []byte, jp, hi int) (int, int) {
	maxLo := 0 // no byte's acknowledged version is later
	for _, a := range h.acks {
		if a.op < jp {
			maxLo = max(maxLo, a.ver)
		}
	}
	for _, v := range h.vers[maxLo : hi+1] {
		if bytes.Equal(v, b) {
			return -1, 0
		}
	}
	for i := range b {
		lo := 0
		for _, a := range h.acks {
			if a.op < jp && a.from <= i && i < a.to {
				lo = a.ver
			}
		}
		ok := false
		for _, v := range h.vers[lo : hi+1] {
			if v[i] == b[i] {
				ok = true
				break
			}
		}
		if !ok {
			return i, lo
		}
	}
	return -1, 0
}

// hotBlocks are blocks near the edges of map pages, where a scenario's
// writes go, so that FLUSHes write several pages.
func hotOffsets(nblocks int64, bs int64) []int64 {
	return []int64{0, (pageBlocks - 8) * bs, (2*pageBlocks - 8) * bs, (nblocks - 16) * bs}
}

// TestCloneCrashAtEveryWrite runs random scenarios of writes (partial,
// whole-block, FUA), trims, zeroes and flushes, and checks the overlay
// after a simulated crash at every write and sync they made.
func TestCloneCrashAtEveryWrite(t *testing.T) {
	const bs = 4096
	nblocks := int64(2*pageBlocks + 50)
	size := nblocks*bs - 3000
	hot := hotOffsets(nblocks, bs)
	ops, seeds := 40, uint64(3)
	if testing.Short() {
		ops, seeds = 20, 1
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 42))
			sc := newCrashScenario(t, size, bs, hot)
			for range ops {
				off := min(hot[r.IntN(len(hot))]+r.Int64N(16*bs), size-1)
				n := min(r.Int64N(3*bs)+1, size-off)
				if r.IntN(2) == 0 { // aligned, to exercise whole blocks
					off, n = off&^(bs-1), (n+bs-1)&^(bs-1)
					n = min(n, size-off)
				}
				switch x := r.IntN(10); {
				case x < 4:
					sc.write(off, randBytes(int(n), r.Uint64()), false)
				case x < 5:
					sc.writeRacing(off, randBytes(int(n), r.Uint64()))
				case x < 6:
					sc.write(off, randBytes(int(n), r.Uint64()), true)
				case x < 7:
					sc.trim(off, n)
				case x < 8:
					sc.zero(off, n, r.IntN(2) == 0)
				case x < 9:
					sc.flushRacing(off, randBytes(int(n), r.Uint64()))
				default:
					sc.flush()
				}
			}
			sc.flush()
			n := sc.verifyAll(r)
			t.Logf("%d client operations, %d disk operations, %d crashed disks checked", len(sc.ops), len(sc.disk.log), n)
		})
	}
}

// TestCloneCrashTornSlot: a map slot torn by a crash is ignored in favour
// of the other slot; a slot whose checksum holds over nonsense, and a
// page whose two slots are both torn, make the overlay corrupt.
func TestCloneCrashTornSlot(t *testing.T) {
	const bs = 4096
	sc := newCrashScenario(t, 64*bs, bs, []int64{0})
	sc.write(0, randBytes(bs, 1), false)
	sc.flush()
	sc.write(bs, randBytes(bs, 2), false)
	sc.flush()
	d := sc.disk.crashed(len(sc.disk.log), func(int) int { return 1 })
	// Tear the slot the second flush wrote.
	cur := int(sc.c.slots[0].cur)
	put(d.sectors, slotOffset(0, cur)+1024, 8, []byte("tornTORN"))
	c, err := openCloneOn(d, sc.base, true)
	require.NoError(t, err)
	require.Equal(t, stateData, c.states.get(0))
	require.Equal(t, stateBase, c.states.get(1), "the torn newer copy is ignored")

	put(d.sectors, slotOffset(0, 1-cur)+1024, 8, []byte("tornTORN"))
	_, err = openCloneOn(d, sc.base, true)
	require.ErrorIs(t, err, ErrOverlayCorrupt, "both copies torn")

	d = sc.disk.crashed(len(sc.disk.log), func(int) int { return 1 })
	slot := make([]byte, slotSize)
	words := make([]uint64, pageWords)
	words[0] = 3 // an invalid state, under a valid checksum
	encodeSlot(slot, 0, 99, words)
	put(d.sectors, slotOffset(0, cur), slotSize, slot)
	_, err = openCloneOn(d, sc.base, true)
	require.ErrorIs(t, err, ErrOverlayCorrupt)
}
