package logdisk

import (
	"bytes"
	"sync"
	"testing"
)

// lent joins the slices Lend returned.
func lent(iov [][]byte) []byte { return bytes.Join(iov, nil) }

// TestLendReadsAsReadAt: what Lend lends is what ReadAt reads, over
// stored data, holes, zero extents and data still in the journal, and
// every pin is given back by Release.
func TestLendReadsAsReadAt(t *testing.T) {
	st := NewMemStore()
	model := writtenImage(t, st, 4<<20, fill64(1<<20, 11))
	w := openDisk(t, testConfig(t, st))
	mustWrite(t, w, fill(8192, 3), 1<<20+4096) // in the journal, next to a hole
	if err := w.WriteZeroes(100<<10, 8192, false, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ off, n int64 }{
		{0, 4096}, {5000, 300 << 10}, {1<<20 - 4096, 16 << 10}, {90 << 10, 64 << 10}, {2 << 20, 1 << 20}, {0, 4 << 20},
	} {
		want := make([]byte, r.n)
		if _, err := w.ReadAt(want, r.off); err != nil {
			t.Fatal(err)
		}
		iov, loan, err := w.Lend(nil, r.off, r.n)
		if err != nil {
			t.Fatalf("Lend %d+%d: %v", r.off, r.n, err)
		}
		requireEqual(t, lent(iov), want, "lent data")
		loan.Release()
	}
	_ = model
	requireNoPins(t, w.cache)
	if _, _, err := w.Lend(nil, 4<<20-4096, 8192); err == nil {
		t.Fatal("Lend past the end succeeded")
	}
	requireNoPins(t, w.cache)
}

// requireNoPins checks that nothing holds a block of c.
func requireNoPins(t *testing.T, c *cache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loans != 0 {
		t.Fatalf("%d loans outstanding; want none", c.loans)
	}
	for _, r := range c.blocks {
		for _, b := range r.blocks {
			if b != nil && b.pins != 0 {
				t.Fatalf("block %v has %d pins; want none", b.key, b.pins)
			}
		}
	}
}

// TestLendPinsBlocks: blocks a loan holds are neither reused nor changed
// while readers push everything else through a cache too small for both,
// evicting them; once released, their buffers are reused.
func TestLendPinsBlocks(t *testing.T) {
	st := NewMemStore()
	model := writtenImage(t, st, 8<<20, fill64(4<<20, 13))
	cfg := readOnlyConfig(t, st)
	cfg.CacheSize = 64 * cacheBlock // 1 MiB
	d := openDisk(t, cfg)
	const off, n = 64 << 10, 256 << 10
	iov, l, err := d.Lend(nil, off, n)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	checked := make(chan int)
	go func() { // reads the lent bytes while the readers run (-race)
		k := 0
		defer func() { checked <- k }()
		for {
			select {
			case <-done:
				return
			default:
			}
			if !bytes.Equal(lent(iov), model[off:off+n]) {
				t.Error("lent data changed under the loan")
				return
			}
			k++
		}
	}()
	var wg sync.WaitGroup
	for g := range 4 { // readers evicting the lent blocks over and over
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 128<<10)
			for i := range 40 {
				o := int64(1<<20 + ((g*40+i)*len(buf))%(3<<20))
				if _, err := d.ReadAt(buf, o); err != nil {
					t.Error(err)
					return
				}
				requireEqual(t, buf, model[o:o+int64(len(buf))], "read beside a loan")
			}
		}()
	}
	wg.Wait()
	close(done)
	if k := <-checked; k == 0 {
		t.Fatal("the lent bytes were never checked while the readers ran")
	}
	requireEqual(t, lent(iov), model[off:off+n], "lent data after the cache was refilled")
	d.cache.mu.Lock()
	evicted := 0
	for _, b := range l.(*loan).blocks {
		if b.evicted {
			evicted++
		}
	}
	d.cache.mu.Unlock()
	if evicted == 0 {
		t.Fatal("no lent block was evicted: the test did not test eviction under a loan")
	}
	l.Release()
	requireNoPins(t, d.cache)
	if got := d.cache.size(); got > cfg.CacheSize {
		t.Fatalf("the cache holds %d bytes, over its limit %d", got, cfg.CacheSize)
	}
}
