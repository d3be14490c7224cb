package server

import (
	"sync/atomic"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/stretchr/testify/require"
)

// TestCachedReadsInline: READs of a file on a disk whose data is in the
// page cache are answered on the reader (plan.go: planCachedRead): small ones
// read with RWF_NOWAIT, large ones marked for sendfile, under structured
// replies once the file's data run is known. When the backend reports
// them uncached they run on goroutines of their own as before. The data
// is right either way, under every strategy and both kinds of reply.
func TestCachedReadsInline(t *testing.T) {
	const size = 1 << 20
	data := pattern(size, 9)
	reads := []struct {
		off uint64
		n   uint32
	}{{4096, 4096}, {100, 3000}, {65536 + 5, 128 << 10}, {0, 256 << 10}}
	run(t, func(t *testing.T, strategy string) {
		for _, sr := range []bool{false, true} {
			file, _ := fileExport(t, t.TempDir(), size, data)
			f := &missingCache{diskFile: file}
			var _ backend.FileSource = f
			if f.NonBlocking() {
				testenv.SkipOutsideCI(t, "the test directory is in memory, not on a disk")
			}
			srv, c := serveExportD(t, strategy, size, f, sr)
			check := func(cookie, off uint64, n uint32) {
				t.Helper()
				c.read(cookie, off, n)
				want := data[off : off+uint64(n)]
				if sr {
					c.wantStructuredRead(cookie, off, want)
				} else {
					c.wantRead(cookie, want)
				}
			}
			if sr {
				// A large structured READ may need a hole lookup, which the
				// reader leaves to the READ's goroutine while the file's
				// data run is not known. Such READs are not misses: the
				// small READ after them is still tried on the reader.
				f.unknown.Store(true)
				for i := range 2 * missRun {
					check(uint64(100+i), 0, 64<<10)
				}
				require.Zero(t, readsOnReader(srv, "d"), "a hole lookup is left to the READ's goroutine")
				check(99, 0, 4096)
				require.Equal(t, int64(1), readsOnReader(srv, "d"), "READs the reader could not try count as no misses")
				f.unknown.Store(false)
			}
			base := readsOnReader(srv, "d")
			for i, r := range reads {
				check(uint64(i), r.off, r.n)
				require.Equal(t, base+int64(i+1), readsOnReader(srv, "d"), "cached READ %d (%d bytes at %d, structured %v) is answered on the reader", i, r.n, r.off, sr)
			}

			// The page cache cannot be emptied reliably under this test:
			// with the pages dropped by FADV_DONTNEED and cachestat
			// agreeing, a 3000-byte READ still found its page cached now
			// and then (the previous READ, one page on, may bring it back).
			// So the backend now reports every range uncached;
			// backend.TestReadCached checks the real page cache.
			f.miss.Store(true)
			for i, r := range reads {
				check(uint64(10+i), r.off, r.n)
			}
			require.Equal(t, base+int64(len(reads)), readsOnReader(srv, "d"), "uncached READs run on goroutines")
		}
	})
}

// missingCache is a File that reports no data cached once miss is set,
// and no data run known while unknown is set.
// It embeds the File under another name (diskFile), so that the File's
// File method is promoted rather than shadowed by the field.
type missingCache struct {
	*diskFile
	miss    atomic.Bool
	unknown atomic.Bool // no data run is known (KnownData)
}

type diskFile = backend.File

func (m *missingCache) Cached(off, n int64) bool {
	return !m.miss.Load() && m.diskFile.Cached(off, n)
}

func (m *missingCache) KnownData(off, n int64) bool {
	return !m.unknown.Load() && m.diskFile.KnownData(off, n)
}

func (m *missingCache) ReadCached(p []byte, off int64) bool {
	return !m.miss.Load() && m.diskFile.ReadCached(p, off)
}

// TestCacheTries: after missRun misses in a row the reader tries one READ
// in missRun, and a hit brings back a try for every READ.
func TestCacheTries(t *testing.T) {
	var ct cacheTries
	for range missRun {
		require.True(t, ct.try())
		ct.record(false)
	}
	tries := 0
	for range 4 * missRun {
		if ct.try() {
			tries++
			ct.record(false)
		}
	}
	require.Equal(t, 4, tries, "one try in missRun while every try misses")
	for !ct.try() {
	}
	ct.record(true)
	for range 3 {
		require.True(t, ct.try(), "every READ is tried after a hit")
		ct.record(true)
	}
}
