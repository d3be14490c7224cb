//go:build linux

package backend

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// kind is one backend under the shared tests.
type kind struct {
	name string
	open func(t *testing.T, size int64) Backend
}

// kinds lists every writable backend; each test below runs under all.
func kinds() []kind {
	return []kind{
		{"Memory", func(t *testing.T, size int64) Backend { return NewMemory(size) }},
		{"File", openTempFile},
		{"Mapped", func(t *testing.T, size int64) Backend {
			m, err := NewMapped(size, false)
			require.NoError(t, err)
			t.Cleanup(func() { m.Close() })
			return m
		}},
		{"MappedPersist", openPersistMapped},
		{"Fault(no rules)", func(t *testing.T, size int64) Backend { return NewFault(NewMemory(size)) }},
	}
}

// run runs f under every backend kind, modelled on net/http's run(t, f).
func run(t *testing.T, f func(t *testing.T, newB func(size int64) Backend)) {
	for _, k := range kinds() {
		t.Run(k.name, func(t *testing.T) {
			f(t, func(size int64) Backend { return k.open(t, size) })
		})
	}
}

func openTempFile(t *testing.T, size int64) Backend {
	f, err := OpenFile(tempImage(t, size), false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func openPersistMapped(t *testing.T, size int64) Backend {
	m, err := LoadMapped(tempImage(t, size), false, true)
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRoundTrip(t *testing.T) {
	run(t, func(t *testing.T, newB func(int64) Backend) {
		b := newB(testSize)
		want := make([]byte, testSize)
		require.Equal(t, want, readAll(t, b), "fresh export: want zeroes")
		for i, w := range []struct{ off, n int64 }{
			{0, 1},
			{chunkSize - 7, 14},              // straddles a chunk edge
			{chunkSize + 100, 2 * chunkSize}, // spans three chunks
			{testSize - 10, 10},              // the ragged tail
			{5000, 0},
		} {
			p := randBytes(int(w.n), uint64(i))
			n, err := b.WriteAt(p, w.off)
			require.NoError(t, err)
			require.Equal(t, int(w.n), n)
			copy(want[w.off:], p)
		}
		require.Equal(t, want, readAll(t, b))
		got := make([]byte, 3000)
		n, err := b.ReadAt(got, chunkSize-1500)
		require.NoError(t, err)
		require.Equal(t, 3000, n)
		require.Equal(t, want[chunkSize-1500:chunkSize+1500], got)
		require.NoError(t, b.Sync())
	})
}

// TestOutOfRange covers the two bugs of go-nbd v0.3.2's MemoryBackend: a
// read straddling the end panicked (slicing past the buffer), and early
// returns kept the lock, so the next call deadlocked.
func TestOutOfRange(t *testing.T) {
	tests := []struct {
		name     string
		off      int64
		n        int
		wantRead int // bytes a read returns before failing
	}{
		{"straddles end", testSize - 10, 20, 10},
		{"starts at end", testSize, 1, 0},
		{"past end", testSize + 4096, 512, 0},
		{"negative", -1, 10, 0},
	}
	run(t, func(t *testing.T, newB func(int64) Backend) {
		b := newB(testSize)
		for _, tt := range tests {
			p := make([]byte, tt.n)
			n, err := b.ReadAt(p, tt.off)
			require.ErrorIs(t, err, ErrOutOfRange, "read %s", tt.name)
			require.Equal(t, tt.wantRead, n, "read %s: got n", tt.name)
			n, err = b.WriteAt(p, tt.off)
			require.ErrorIs(t, err, ErrOutOfRange, "write %s", tt.name)
			require.Zero(t, n, "write %s: got n", tt.name)
		}
		_, err := b.ReadAt(make([]byte, 1), testSize)
		require.ErrorIs(t, err, io.EOF, "read at end: want io.EOF for io.ReaderAt callers")
		requireNoDeadlock(t, b)
	})
}

// requireNoDeadlock checks that reads and writes still complete after the
// failed calls above, as they did not in go-nbd v0.3.2.
func requireNoDeadlock(t *testing.T, b Backend) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := b.WriteAt([]byte("ok"), 0)
		if err == nil {
			_, err = b.ReadAt(make([]byte, 2), 0)
		}
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("ReadAt/WriteAt blocked after an out-of-range request: lock leaked")
	}
}

func TestZeroing(t *testing.T) {
	tests := []struct {
		name   string
		off, n int64
		op     func(b Backend, off, n int64) error
	}{
		{"trim whole chunks", chunkSize, 2 * chunkSize, trim},
		{"trim partial", 100, 5000, trim},
		{"trim to end", chunkSize + 3, testSize - chunkSize - 3, trim},
		{"zero hole allowed", 4095, chunkSize + 2, zeroOp(false)},
		{"zero no hole", 7, 2*chunkSize + 9, zeroOp(true)},
		{"zero nothing", 7, 0, zeroOp(true)},
	}
	run(t, func(t *testing.T, newB func(int64) Backend) {
		for _, tt := range tests {
			b := newB(testSize)
			want := randBytes(testSize, 7)
			_, err := b.WriteAt(want, 0)
			require.NoError(t, err)
			require.NoError(t, tt.op(b, tt.off, tt.n), tt.name)
			clear(want[tt.off : tt.off+tt.n])
			require.True(t, bytes.Equal(want, readAll(t, b)), "%s: contents differ after zeroing", tt.name)
			require.ErrorIs(t, tt.op(b, testSize-1, 2), ErrOutOfRange, tt.name)
			checkExtents(t, b, want)
		}
	})
}

func trim(b Backend, off, n int64) error { return b.(Trimmer).Trim(off, n) }

func zeroOp(noHole bool) func(Backend, int64, int64) error {
	return func(b Backend, off, n int64) error {
		return b.(Zeroer).WriteZeroes(off, n, noHole, false)
	}
}

func TestCapabilities(t *testing.T) {
	run(t, func(t *testing.T, newB func(int64) Backend) {
		b := newB(testSize)
		require.Implements(t, (*Trimmer)(nil), b)
		require.Implements(t, (*FastZeroer)(nil), b)
		require.Implements(t, (*Extenter)(nil), b)
		require.Implements(t, (*Cacher)(nil), b)
		require.True(t, b.(MultiConner).CanMultiConn(), "CanMultiConn")
		require.NoError(t, b.(Cacher).Cache(0, testSize))
		size, err := b.Size()
		require.NoError(t, err)
		require.Equal(t, int64(testSize), size)
	})
}

// TestConcurrent hammers overlapping and disjoint ranges from several
// goroutines; run with -race. Each goroutine owns a disjoint slot that it
// checks, and all share one chunk that they overwrite and trim.
func TestConcurrent(t *testing.T) {
	const workers, rounds, slot = 8, 50, 4000
	run(t, func(t *testing.T, newB func(int64) Backend) {
		b := newB(testSize)
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() { errs <- hammer(b, int64(w*slot), slot, uint64(w), rounds) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
	})
}

// hammer writes and verifies its own slot and scribbles on a shared chunk.
func hammer(b Backend, off int64, n int, seed uint64, rounds int) error {
	mine, got := randBytes(n, seed), make([]byte, n)
	shared := int64(2 * chunkSize)
	for i := range rounds {
		if _, err := b.WriteAt(mine, off); err != nil {
			return err
		}
		if _, err := b.WriteAt(mine[:100], shared+int64(i%7)*50); err != nil {
			return err
		}
		if _, err := b.ReadAt(got, off); err != nil {
			return err
		}
		if !bytes.Equal(mine, got) {
			return errors.New("slot contents changed under a concurrent writer")
		}
		if err := b.(Trimmer).Trim(shared, chunkSize); err != nil {
			return err
		}
	}
	return nil
}
