package bufstrategy

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fastReclaim is a Config whose reclaimer runs every millisecond and frees
// buffers idle for 10 ms, so tests see the idle release within a second.
var fastReclaim = Config{
	ReclaimTick:    time.Millisecond,
	IdleAfter:      10 * time.Millisecond,
	ReclaimPerTick: 3 << 20,
	FreeOSMin:      -1,
}

func TestIdleReclaim(t *testing.T) {
	for _, name := range []string{NameGrow, NamePool, NameStream} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFactory(t, name, fastReclaim)
				spike(t, f, 4, 8, 1<<20)
				if st := f.Stats(); st.BytesIdle == 0 {
					t.Fatalf("after the spike: %v; want idle > 0", st)
				}
				waitHeld(t, f, 0)
				if st := f.Stats(); st.Reclaimed == 0 || st.BytesIdle != 0 {
					t.Errorf("after reclaim: %v; want reclaimed > 0, idle 0", st)
				}
			})
		})
	}
}

// TestReclaimerRestarts checks that the reclaimer, which exits when
// nothing is idle, starts again on the next spike.
func TestReclaimerRestarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFactory(t, NamePool, fastReclaim)
		for range 3 {
			spike(t, f, 2, 4, 256<<10)
			waitHeld(t, f, 0)
		}
	})
}

// TestReclaimKeepsBusyBuffers checks that buffers used more recently than
// IdleAfter survive the reclaimer.
func TestReclaimKeepsBusyBuffers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := fastReclaim
		cfg.IdleAfter = time.Hour
		f := newFactory(t, NameGrow, cfg)
		spike(t, f, 1, 2, 1<<20)
		time.Sleep(time.Minute) // 60,000 ticks
		synctest.Wait()
		if st := f.Stats(); st.BytesIdle != 2<<20 || st.Reclaimed != 0 {
			t.Errorf("recently used: %v; want idle %d, reclaimed 0", st, 2<<20)
		}
	})
}

// TestReclaimFreeOSMemory: the reclaimer hands freed pages back to the
// kernel (debug.FreeOSMemory) after a tick that freed at least FreeOSMin
// bytes, at most once per freeOSInterval, and never after a smaller one.
func TestReclaimFreeOSMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := fastReclaim
		cfg.FreeOSMin = 1 << 20
		f := newFactory(t, NamePool, cfg)
		var calls atomic.Int32
		f.(*Pool).rec.freeOS = func() { calls.Add(1) }
		reclaim := func() { t.Helper(); waitHeld(t, f, 0) }
		// 4 MiB at 3 MiB a tick: two ticks of 1 MiB or more, one call.
		spike(t, f, 1, 4, 1<<20)
		reclaim()
		if n := calls.Load(); n != 1 {
			t.Fatalf("FreeOSMemory after 4 MiB freed in two ticks: %d calls; want 1", n)
		}
		time.Sleep(freeOSInterval)
		spike(t, f, 1, 2, 1<<20)
		reclaim()
		if n := calls.Load(); n != 2 {
			t.Fatalf("FreeOSMemory after another %v and 2 MiB: %d calls; want 2", freeOSInterval, n)
		}
		time.Sleep(freeOSInterval)
		spike(t, f, 1, 2, 256<<10)
		reclaim()
		if n := calls.Load(); n != 2 {
			t.Fatalf("FreeOSMemory after 512 KiB freed, under FreeOSMin: %d calls; want still 2", n)
		}
	})
}

// spike opens conns connections, each getting and returning per buffers
// of size bytes at once.
func spike(t *testing.T, f Factory, conns, per, size int) {
	t.Helper()
	for range conns {
		s := newConn(t, f)
		var bufs [][]byte
		for range per {
			bufs = append(bufs, mustGet(t, s, size))
		}
		for _, b := range bufs {
			s.Put(b)
		}
	}
}

// waitHeld lets the reclaimer of f, in the test's synctest bubble, run
// until every buffer has been idle for IdleAfter and its ticks have freed
// them at ReclaimPerTick, then checks that f holds want bytes.
func waitHeld(t *testing.T, f Factory, want int64) {
	t.Helper()
	time.Sleep(time.Second) // fastReclaim: 10 ms idle, 3 MiB per 1 ms tick
	synctest.Wait()
	if st := f.Stats(); st.BytesHeld != want {
		t.Fatalf("after reclaim: %v; want held=%d", st, want)
	}
}

func TestGrowReusesBestFit(t *testing.T) {
	f := newFactory(t, NameGrow, Config{ReclaimTick: -1})
	s := newConn(t, f)
	big, small := mustGet(t, s, 1<<20), mustGet(t, s, 4096)
	s.Put(big)
	s.Put(small)
	b := mustGet(t, s, 100)
	if cap(b) != 4096 {
		t.Errorf("Get(100) cap = %d; want the 4096-byte buffer (best fit)", cap(b))
	}
	s.Put(b)
	// No idle buffer fits 2 MiB: the largest (1 MiB) is dropped and a new
	// buffer grown in its place.
	s.Put(mustGet(t, s, 2<<20))
	if st := f.Stats(); st.BytesIdle != 2<<20+4096 || st.Allocs != 3 {
		t.Errorf("after growing: %v; want idle %d, allocs 3", st, 2<<20+4096)
	}
}

func TestGrowBoundsIdlePerConn(t *testing.T) {
	f := newFactory(t, NameGrow, Config{GrowMaxIdle: 2, ReclaimTick: -1})
	s := newConn(t, f)
	var bufs [][]byte
	for _, n := range []int{4096, 8192, 16384, 32768} {
		bufs = append(bufs, mustGet(t, s, n))
	}
	for _, b := range bufs {
		s.Put(b)
	}
	// The two largest are kept: grow never shrinks.
	if st := f.Stats(); st.BytesIdle != 16384+32768 || st.BytesHeld != st.BytesIdle {
		t.Errorf("4 buffers returned, 2 kept: %v; want idle=held=%d", st, 16384+32768)
	}
}

// TestResizeChurns documents the baseline's pathology: alternating sizes
// allocate on every request; grow and pool allocate once per size.
func TestResizeChurns(t *testing.T) {
	want := map[string]int64{NameResize: 20, NameGrow: 1, NamePool: 2}
	for name, allocs := range want {
		f := newFactory(t, name, Config{ReclaimTick: -1})
		s := newConn(t, f)
		for i := range 20 {
			s.Put(mustGet(t, s, []int{128 << 10, 4096}[i%2]))
		}
		if got := f.Stats().Allocs; got != allocs {
			t.Errorf("%s: %d allocs for 20 alternating requests; want %d", name, got, allocs)
		}
	}
}

// TestResizeKeepsCurrentSize: concurrent requests of one size reuse
// buffers (one per request that was in flight), and a change of size
// frees them all, as go-nbd's resize-on-mismatch does with its one buffer.
func TestResizeKeepsCurrentSize(t *testing.T) {
	f := newFactory(t, NameResize, Config{GrowMaxIdle: 3, ReclaimTick: -1})
	s := newConn(t, f)
	burst := func(n, count int) {
		var bufs [][]byte
		for range count {
			bufs = append(bufs, mustGet(t, s, n))
		}
		for _, b := range bufs {
			s.Put(b)
		}
	}
	burst(256<<10, 4)
	if st := f.Stats(); st.Allocs != 4 || st.BytesIdle != 3*256<<10 {
		t.Fatalf("first burst of 4: %v; want allocs=4, 3 buffers idle", st)
	}
	burst(256<<10, 3)
	if st := f.Stats(); st.Allocs != 4 || st.Hits != 3 {
		t.Fatalf("second burst of 3: %v; want no new allocs, hits=3", st)
	}
	s.Put(mustGet(t, s, 4096))
	if st := f.Stats(); st.Allocs != 5 || st.BytesIdle != 4096 || st.BytesHeld != 4096 {
		t.Fatalf("after a 4 KiB request: %v; want allocs=5, only the 4 KiB buffer held", st)
	}
}

func TestPoolClasses(t *testing.T) {
	tests := []struct{ n, class int }{
		{1, 0}, {4096, 0}, {4097, 1}, {8192, 1}, {128 << 10, 5}, {128<<10 + 1, 6}, {32 << 20, 13},
	}
	for _, tt := range tests {
		if got := classOf(tt.n); got != tt.class {
			t.Errorf("classOf(%d) = %d; want %d", tt.n, got, tt.class)
		}
	}
	f := newFactory(t, NamePool, Config{MaxRequest: 3 << 20})
	if got := len(f.(*Pool).classes); got != 11 { // 4 KiB ... 4 MiB
		t.Errorf("MaxRequest 3 MiB: %d classes; want 11", got)
	}
	b := mustGet(t, newConn(t, f), 3<<20)
	if cap(b) != 4<<20 {
		t.Errorf("Get(3 MiB) cap = %d; want 4 MiB", cap(b))
	}
}

func TestPoolRetentionCap(t *testing.T) {
	f := newFactory(t, NamePool, Config{RetainPerClass: 2 << 20, ReclaimTick: -1})
	s := newConn(t, f)
	var bufs [][]byte
	for range 4 {
		bufs = append(bufs, mustGet(t, s, 1<<20))
	}
	for _, b := range bufs {
		s.Put(b)
	}
	if st := f.Stats(); st.BytesIdle != 2<<20 || st.BytesHeld != 2<<20 {
		t.Errorf("4 x 1 MiB returned with a 2 MiB cap: %v; want idle=held=2 MiB", st)
	}
}

// TestPoolSharedAcrossConns checks that one connection's returned buffer
// serves another connection.
func TestPoolSharedAcrossConns(t *testing.T) {
	for _, name := range []string{NamePool, NameStream} {
		f := newFactory(t, name, Config{ReclaimTick: -1})
		a, b := newConn(t, f), newConn(t, f)
		a.Put(mustGet(t, a, 64<<10))
		b.Put(mustGet(t, b, 64<<10))
		if st := f.Stats(); st.Allocs != 1 || st.Hits != 1 {
			t.Errorf("%s: %v; want allocs 1, hits 1", name, st)
		}
	}
}

func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	budget, _ := NewBudget(64 << 20)
	for _, name := range []string{NamePool, NameGrow, NameStream} {
		for _, n := range []int{4 << 10, 1 << 20} {
			f := newFactory(t, name, Config{Budget: budget})
			s := newConn(t, f)
			ctx := context.Background()
			got := testing.AllocsPerRun(1000, func() {
				b, _ := s.Get(ctx, n)
				s.Put(b)
			})
			if got != 0 {
				t.Errorf("%s Get/Put(%d): %v allocs/op; want 0", name, n, got)
			}
		}
	}
}

// TestCloseStopsReclaimer checks that Close waits for the reclaimer
// goroutine, so a closed factory leaks nothing.
func TestCloseStopsReclaimer(t *testing.T) {
	cfg := fastReclaim
	cfg.IdleAfter = time.Hour // keep it running
	f, err := New(NamePool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	spike(t, f, 1, 1, 4096)
	p := f.(*Pool)
	if !p.rec.running.Load() {
		t.Fatal("reclaimer not started by a retained buffer")
	}
	p.Close()
	select {
	case <-p.rec.done:
	default:
		t.Error("reclaimer goroutine still running after Close")
	}
	if p.rec.running.Load() {
		t.Error("running still set after Close")
	}
}

// TestGrowCancelKeepsIdleBuffer checks that a Get which took an idle
// buffer and then gave up waiting for the budget puts the buffer back.
func TestGrowCancelKeepsIdleBuffer(t *testing.T) {
	budget, _ := NewBudget(64 << 10)
	f := newFactory(t, NameGrow, Config{Budget: budget, ReclaimTick: -1})
	s := newConn(t, f)
	s.Put(mustGet(t, s, 64<<10))
	budget.Acquire(context.Background(), 64<<10) // someone else fills the budget
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := s.Get(ctx, 4096); err != context.DeadlineExceeded {
		t.Fatalf("Get on a full budget: %v; want DeadlineExceeded", err)
	}
	if st := f.Stats(); st.BytesIdle != 64<<10 || st.BytesHeld != 64<<10 || st.BytesInUse != 0 {
		t.Errorf("after the cancelled Get: %v; want idle=held=64 KiB, in-use 0", st)
	}
	budget.Release(64 << 10)
}
