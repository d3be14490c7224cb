//go:build linux

package backend

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/nbdd/nbdd/internal/testenv"
)

// cloneTestSize crosses block, chunk and page edges and ends in a short
// block.
const cloneTestSize = 40*4096 + 1234

// testBase writes a base image of size bytes to a file: random data with
// a hole in its second quarter (the file is sparse there), and returns
// its path and content.
func testBase(t *testing.T, size int64) (string, []byte) {
	t.Helper()
	data := randBytes(int(size), 7)
	clear(data[size/4 : size/2])
	path := filepath.Join(t.TempDir(), "base.raw")
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = f.WriteAt(data[:size/4], 0)
	require.NoError(t, err)
	_, err = f.WriteAt(data[size/2:], size/2)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return path, data
}

// openTestBase opens path as a clone base, closed after the test.
func openTestBase(t *testing.T, path string) *CloneBase {
	t.Helper()
	b, err := OpenCloneBase(path, false, false)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

// newTestClone creates an overlay over a fresh test base and opens it.
func newTestClone(t *testing.T, size int64, blockSize int) (*Clone, []byte, string) {
	t.Helper()
	basePath, data := testBase(t, size)
	base := openTestBase(t, basePath)
	ovl := filepath.Join(t.TempDir(), "vm.ovl")
	require.NoError(t, CreateOverlay(ovl, base, blockSize))
	c, err := OpenClone(ovl, base, false)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, data, ovl
}

// TestCloneReadsBaseWritesOverlay: an unwritten clone reads as its base;
// writes of every alignment read back, land in the overlay and never in
// the base file; blocks around a partial write keep the base's bytes.
func TestCloneReadsBaseWritesOverlay(t *testing.T) {
	for _, bs := range []int{4096, 65536} {
		t.Run(formatBlock(bs), func(t *testing.T) {
			c, model, ovl := newTestClone(t, cloneTestSize, bs)
			basePath := c.base.(*File).File().Name()
			before, err := os.ReadFile(basePath)
			require.NoError(t, err)
			require.Equal(t, model, readAll(t, c), "an unwritten clone reads as its base")

			for i, w := range []struct{ off, n int64 }{
				{0, 4096}, {4096 + 100, 300}, {3*4096 - 7, 20}, {5 * 4096, 3 * 4096},
				{9*4096 + 512, 70000}, {cloneTestSize - 1000, 1000}, {cloneTestSize - 1, 1},
			} {
				p := randBytes(int(w.n), uint64(100+i))
				n, err := c.WriteAt(p, w.off)
				require.NoError(t, err)
				require.Equal(t, len(p), n)
				copy(model[w.off:], p)
				require.Equal(t, model, readAll(t, c), "after write %d at %d+%d", i, w.off, w.n)
			}
			after, err := os.ReadFile(basePath)
			require.NoError(t, err)
			require.Equal(t, before, after, "the base file changed")
			data, _ := c.Allocated()
			require.Positive(t, data)

			require.NoError(t, c.Close())
			c2, err := OpenClone(ovl, openTestBase(t, basePath), false)
			require.NoError(t, err)
			t.Cleanup(func() { c2.Close() })
			require.Equal(t, model, readAll(t, c2), "after Close and reopening")
		})
	}
}

func formatBlock(bs int) string { return map[int]string{4096: "4KiB", 65536: "64KiB"}[bs] }

// TestCloneCopyUp: a partial write to a block from the base copies the
// block up once; a whole-block write copies nothing.
func TestCloneCopyUp(t *testing.T) {
	c, _, _ := newTestClone(t, cloneTestSize, 4096)
	_, err := c.WriteAt(make([]byte, 8192), 4096)
	require.NoError(t, err)
	require.Zero(t, c.copyUps.Load(), "whole blocks need no copy-up")
	_, err = c.WriteAt([]byte("x"), 20000)
	require.NoError(t, err)
	_, err = c.WriteAt([]byte("y"), 20001)
	require.NoError(t, err)
	require.EqualValues(t, 1, c.copyUps.Load(), "one copy-up, then writes in place")
}

// TestCloneConcurrentPartialWrites: writes to different sectors of the
// same blocks, all at once, all survive: copy-ups of one block are
// serialized, so none puts the base's bytes back over another's write.
func TestCloneConcurrentPartialWrites(t *testing.T) {
	for round := range 20 {
		c, model, _ := newTestClone(t, 16*4096, 4096)
		var wg sync.WaitGroup
		for s := range 8 { // 8 sectors of each of the first 16 blocks
			p := bytes.Repeat([]byte{byte(s + 1)}, 512)
			for b := range 16 {
				copy(model[b*4096+s*512:], p)
			}
			wg.Go(func() {
				for b := range 16 {
					_, err := c.WriteAt(p, int64(b*4096+s*512))
					require.NoError(t, err)
				}
			})
		}
		wg.Wait()
		require.Equal(t, model, readAll(t, c), "round %d", round)
	}
}

// TestCloneTrimMasksBase: TRIM of whole blocks makes them read as zeroes
// whatever the base holds, reported as holes; partial blocks at the edges
// keep their data; WRITE_ZEROES zeroes every byte of its range.
func TestCloneTrimMasksBase(t *testing.T) {
	c, model, _ := newTestClone(t, cloneTestSize, 4096)
	_, err := c.WriteAt(randBytes(8192, 3), 8192) // blocks 2-3 into the overlay
	copy(model[8192:], randBytes(8192, 3))
	require.NoError(t, err)

	require.NoError(t, c.Trim(4096+100, 5*4096)) // whole blocks 2..5, edges kept
	clear(model[2*4096 : 6*4096])
	require.Equal(t, model, readAll(t, c))

	require.NoError(t, c.WriteZeroes(30000, 20000, false, false))
	clear(model[30000:50000])
	require.NoError(t, c.WriteZeroes(60000, 100, true, true))
	clear(model[60000:60100])
	require.NoError(t, c.WriteZeroes(70*1024, 12*1024, true, false))
	clear(model[70*1024 : 82*1024])
	require.NoError(t, c.Trim(cloneTestSize-1234, 1234)) // the short last block
	clear(model[cloneTestSize-1234:])
	require.Equal(t, model, readAll(t, c))
	checkExtents(t, c, model)

	got := collectExtents(t, c, 2*4096, 4*4096)
	require.Equal(t, []Extent{{Offset: 2 * 4096, Length: 4 * 4096, Flags: hz}}, got)
	got = collectExtents(t, c, 72*1024, 8*1024)
	require.Equal(t, []Extent{{Offset: 72 * 1024, Length: 8 * 1024, Flags: hz}}, got, "noHole zeroes are reported as qcow2's zero clusters are")
}

// TestCloneExtentsUnion: block status is the base's extents where the
// clone never wrote, data where it wrote, hole/zero where it masked.
func TestCloneExtentsUnion(t *testing.T) {
	const size = 64 * 4096
	c, model, _ := newTestClone(t, size, 4096)
	// The base: data [0, 16 blocks), hole [16, 32), data [32, 64).
	got := collectExtents(t, c, 0, size)
	require.Equal(t, []Extent{{0, 16 * 4096, 0}, {16 * 4096, 16 * 4096, hz}, {32 * 4096, 32 * 4096, 0}}, got)

	_, err := c.WriteAt(make([]byte, 4096), 20*4096) // data inside the base's hole
	require.NoError(t, err)
	require.NoError(t, c.Trim(40*4096, 4*4096)) // masked inside the base's data
	clear(model[40*4096 : 44*4096])
	got = collectExtents(t, c, 0, size)
	require.Equal(t, []Extent{
		{0, 16 * 4096, 0}, {16 * 4096, 4 * 4096, hz}, {20 * 4096, 4096, 0}, {21 * 4096, 11 * 4096, hz},
		{32 * 4096, 8 * 4096, 0}, {40 * 4096, 4 * 4096, hz}, {44 * 4096, 20 * 4096, 0},
	}, got)
	checkExtents(t, c, model)

	got = collectExtents(t, c, 19*4096+5, 3*4096)
	require.Equal(t, []Extent{{19*4096 + 5, 4096 - 5, hz}, {20 * 4096, 4096, 0}, {21 * 4096, 4096 + 5, hz}}, got, "a range inside")

	var first []Extent
	require.NoError(t, c.Extents(0, size, func(e Extent) bool { first = append(first, e); return false }))
	require.Len(t, first, 1, "fn returning false stops")
}

// TestCloneBaseChanged: an overlay refuses a base of another size, other
// content, or a newer modification time.
func TestCloneBaseChanged(t *testing.T) {
	c, _, ovl := newTestClone(t, cloneTestSize, 4096)
	basePath := c.base.(*File).File().Name()
	require.NoError(t, c.Close())

	other, _ := testBase(t, cloneTestSize+4096)
	_, err := OpenClone(ovl, openTestBase(t, other), false)
	require.ErrorIs(t, err, ErrBaseChanged)

	changed := filepath.Join(t.TempDir(), "changed.raw")
	b, err := os.ReadFile(basePath)
	require.NoError(t, err)
	b[cloneTestSize-5] ^= 1
	require.NoError(t, os.WriteFile(changed, b, 0o644))
	_, err = OpenClone(ovl, openTestBase(t, changed), false)
	require.ErrorIs(t, err, ErrBaseChanged, "the last MiB differs")

	fi, err := os.Stat(basePath)
	require.NoError(t, err)
	require.NoError(t, os.Chtimes(basePath, time.Now(), fi.ModTime().Add(time.Second)))
	_, err = OpenClone(ovl, openTestBase(t, basePath), false)
	require.ErrorIs(t, err, ErrBaseChanged, "modified since")
	require.NoError(t, os.Chtimes(basePath, time.Now(), fi.ModTime()))
	c2, err := OpenClone(ovl, openTestBase(t, basePath), false)
	require.NoError(t, err)
	require.NoError(t, c2.Close())
}

// TestCloneOverlayLock: a writable overlay is held by one Clone at a
// time; readers share it only with readers.
func TestCloneOverlayLock(t *testing.T) {
	c, _, ovl := newTestClone(t, cloneTestSize, 4096)
	base := openTestBase(t, c.base.(*File).File().Name())
	_, err := OpenClone(ovl, base, false)
	require.ErrorIs(t, err, ErrOverlayInUse)
	_, err = OpenClone(ovl, base, true)
	require.ErrorIs(t, err, ErrOverlayInUse)
	require.NoError(t, c.Close())
	r1, err := OpenClone(ovl, base, true)
	require.NoError(t, err)
	r2, err := OpenClone(ovl, base, true)
	require.NoError(t, err)
	_, err = r1.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, ErrReadOnly)
	_, err = OpenClone(ovl, base, false)
	require.ErrorIs(t, err, ErrOverlayInUse)
	require.NoError(t, r1.Close())
	require.NoError(t, r2.Close())
	require.Error(t, CreateOverlay(ovl, base, 0), "an existing overlay is never replaced")
}

// TestTempCloneLeavesNothing: a throw-away clone works like any clone and
// leaves no file in its directory, before or after Close.
func TestTempCloneLeavesNothing(t *testing.T) {
	basePath, model := testBase(t, cloneTestSize)
	dir := t.TempDir()
	c, err := NewTempClone(dir, openTestBase(t, basePath), 0)
	require.NoError(t, err)
	_, err = c.WriteAt([]byte("hello"), 5000)
	require.NoError(t, err)
	copy(model[5000:], "hello")
	require.NoError(t, c.Sync())
	require.Equal(t, model, readAll(t, c))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries)
	require.NoError(t, c.Close())
}

// TestCloneModel applies random writes, trims and zeroes to a clone and to
// a byte slice, and requires the same contents and truthful extents, with
// a Sync, a reopen or nothing between batches.
func TestCloneModel(t *testing.T) {
	for _, bs := range []int{4096, 65536} {
		t.Run(formatBlock(bs), func(t *testing.T) {
			const size = 300*1024 + 77
			c, model, ovl := newTestClone(t, size, bs)
			basePath := c.base.(*File).File().Name()
			r := rand.New(rand.NewPCG(1, uint64(bs)))
			for batch := range 30 {
				for range 10 {
					off := r.Int64N(size)
					n := r.Int64N(min(size-off, 3*int64(bs))) + 1
					switch r.IntN(4) {
					case 0, 1:
						p := randBytes(int(n), r.Uint64())
						_, err := c.WriteAt(p, off)
						require.NoError(t, err)
						copy(model[off:], p)
					case 2:
						require.NoError(t, c.Trim(off, n))
						if lo, hi := c.wholeBlocks(off, n); lo < hi {
							clear(model[c.blockStart(lo):min(c.blockStart(hi), size)])
						}
					case 3:
						require.NoError(t, c.WriteZeroes(off, n, r.IntN(2) == 0, false))
						clear(model[off : off+n])
					}
				}
				require.Equal(t, model, readAll(t, c), "batch %d", batch)
				checkExtents(t, c, model)
				switch batch % 3 {
				case 1:
					require.NoError(t, c.Sync())
				case 2:
					require.NoError(t, c.Close())
					var err error
					c, err = OpenClone(ovl, openTestBase(t, basePath), false)
					require.NoError(t, err)
					t.Cleanup(func() { c.Close() })
				}
			}
		})
	}
}

// TestCloneFUA: a FUA write to blocks whose data the map on disk already
// has takes the fast path (no Sync); any other FUA write syncs the map.
func TestCloneFUA(t *testing.T) {
	c, model, _ := newTestClone(t, cloneTestSize, 4096)
	_, err := c.WriteAtFUA([]byte("first"), 100)
	require.NoError(t, err)
	copy(model[100:], "first")
	require.False(t, c.dirty.all(0, 1), "a FUA write that needed the map synced it")
	require.True(t, c.durable.all(0, 1))
	_, err = c.WriteAtFUA([]byte("second"), 200)
	require.NoError(t, err)
	copy(model[200:], "second")
	require.Equal(t, model, readAll(t, c))
}

// TestCloneReadCached: ReadCached answers from the page cache of the
// base and of the overlay, and zeroes for masked blocks.
func TestCloneReadCached(t *testing.T) {
	c, model, _ := newTestClone(t, cloneTestSize, 4096)
	var _ CachedReader = c
	_, err := c.WriteAt(randBytes(4096, 9), 4096)
	require.NoError(t, err)
	copy(model[4096:], randBytes(4096, 9))
	require.NoError(t, c.Trim(8192, 4096))
	clear(model[8192:12288])
	got := make([]byte, 4*4096)
	require.True(t, c.ReadCached(got, 100), "base and overlay pages just written are cached")
	require.Equal(t, model[100:100+len(got)], got)
	require.False(t, c.ReadCached(got, cloneTestSize-100), "past the end")
}

// TestCloneWriteFromPipe: the whole blocks of a spliced WRITE go to the
// overlay, its partial edges through the copy-up path.
func TestCloneWriteFromPipe(t *testing.T) {
	c, model, _ := newTestClone(t, cloneTestSize, 4096)
	require.True(t, c.CanWriteFromPipe())
	data := randBytes(100000, 11)
	for _, w := range []struct{ off, n int }{{1000, 30000}, {12288, 8192}, {50000, 100}, {cloneTestSize - 5000, 5000}} {
		n, err := c.WriteFromPipe(pipeWith(t, data[:w.n]), int64(w.off), w.n)
		require.NoError(t, err)
		require.Equal(t, w.n, n)
		copy(model[w.off:], data[:w.n])
		require.Equal(t, model, readAll(t, c), "after %+v", w)
	}
	_, err := c.WriteFromPipe(pipeWith(t, data[:10]), cloneTestSize-5, 10)
	require.ErrorIs(t, err, ErrOutOfRange)
}

// TestCloneOverMappedBase: a base loaded into memory serves clones as a
// file base does, and the clone never blocks when its overlay is on
// tmpfs.
func TestCloneOverMappedBase(t *testing.T) {
	basePath, model := testBase(t, cloneTestSize)
	base, err := OpenCloneBase(basePath, true, false)
	require.NoError(t, err)
	t.Cleanup(func() { base.Close() })
	require.IsType(t, &Mapped{}, base.Backend())
	c, err := NewTempClone(t.TempDir(), base, 0)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.Equal(t, model, readAll(t, c))
	_, err = c.WriteAt([]byte("abc"), 7)
	require.NoError(t, err)
	copy(model[7:], "abc")
	require.Equal(t, model, readAll(t, c))
	if dir, err := os.MkdirTemp("/dev/shm", "clone"); err == nil {
		defer os.RemoveAll(dir)
		shm, err := NewTempClone(dir, base, 0)
		require.NoError(t, err)
		require.True(t, shm.NonBlocking(), "memory base and tmpfs overlay")
		require.NoError(t, shm.Close())
	}
	require.False(t, c.NonBlocking() && !isTmpfs(t.TempDir()), "an overlay on disk may block")
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

// TestCloneErrors: out-of-range requests fail as for other backends, and
// a clone opened read-only refuses every write.
func TestCloneErrors(t *testing.T) {
	c, _, ovl := newTestClone(t, cloneTestSize, 4096)
	_, err := c.WriteAt([]byte("xx"), cloneTestSize-1)
	require.ErrorIs(t, err, ErrOutOfRange)
	n, err := c.ReadAt(make([]byte, 10), cloneTestSize-4)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.Equal(t, 4, n)
	require.ErrorIs(t, c.Trim(cloneTestSize, 1), ErrOutOfRange)
	require.NoError(t, c.Close())

	ro, err := OpenClone(ovl, openTestBase(t, c.base.(*File).File().Name()), true)
	require.NoError(t, err)
	defer ro.Close()
	require.True(t, ro.ReadOnly())
	_, err = ro.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, ErrReadOnly)
	require.ErrorIs(t, ro.Trim(0, 4096), ErrReadOnly)
	require.ErrorIs(t, ro.WriteZeroes(0, 4096, false, false), ErrReadOnly)
	require.False(t, ro.CanWriteFromPipe())
}

// TestCloneViews: a clone whose base and overlay are in memory lends its
// READs (Viewer), and what it lends is what ReadAt reads: the base's
// bytes, the overlay's and zeroes; on a disk it lends nothing.
func TestCloneViews(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "clone")
	if err != nil {
		testenv.SkipOutsideCI(t, "no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_, model := testBase(t, cloneTestSize)
	shmBase := filepath.Join(dir, "base.raw")
	require.NoError(t, os.WriteFile(shmBase, model, 0o644))
	for _, load := range []bool{false, true} {
		base, err := OpenCloneBase(shmBase, load, false)
		require.NoError(t, err)
		ovl := filepath.Join(dir, fmt.Sprint("vm", load, ".ovl"))
		require.NoError(t, CreateOverlay(ovl, base, 0))
		c, err := OpenClone(ovl, base, false)
		require.NoError(t, err)
		v, ok := c.Export().(Viewer)
		require.True(t, ok, "load=%v: base and overlay in memory", load)
		want := bytes.Clone(model)
		_, err = c.WriteAt(randBytes(10000, 4), 5000)
		require.NoError(t, err)
		copy(want[5000:], randBytes(10000, 4))
		require.NoError(t, c.Trim(20*4096, 14*4096))
		clear(want[20*4096 : 34*4096])
		for _, r := range [][2]int64{{0, cloneTestSize}, {4999, 10002}, {20*4096 - 1, 70000}, {cloneTestSize - 1, 1}} {
			iov, err := v.AppendView(nil, r[0], r[1])
			require.NoError(t, err)
			require.Equal(t, want[r[0]:r[0]+r[1]], bytes.Join(iov, nil), "view of %d+%d", r[0], r[1])
		}
		require.NoError(t, c.Close())
		require.NoError(t, base.Close())
	}
	// A base with a hole lends shared zeroes there, never its mapping: a
	// read of a hole through it would allocate tmpfs pages.
	holed := filepath.Join(dir, "holed.raw")
	require.NoError(t, os.WriteFile(holed, model, 0o644))
	hf, err := os.OpenFile(holed, os.O_RDWR, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Fallocate(int(hf.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 8*4096, 8*4096))
	hf.Close()
	hb, err := OpenCloneBase(holed, false, false)
	require.NoError(t, err)
	defer hb.Close()
	hc, err := NewTempClone(dir, hb, 0)
	require.NoError(t, err)
	defer hc.Close()
	hv := hc.Export().(Viewer)
	iov, err := hv.AppendView(nil, 7*4096, 10*4096)
	require.NoError(t, err)
	want := bytes.Clone(model[7*4096 : 17*4096])
	clear(want[4096 : 9*4096])
	require.Equal(t, want, bytes.Join(iov, nil))
	require.Len(t, iov, 3)
	require.Same(t, &zeroChunk[0], &iov[1][0], "the hole is lent as shared zeroes")

	disk, _, _ := newTestClone(t, cloneTestSize, 0)
	_, ok := disk.Export().(Viewer)
	require.Equal(t, isTmpfs(t.TempDir()), ok, "a clone on disk lends nothing")
}
