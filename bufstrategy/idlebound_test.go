package bufstrategy

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestIdleBoundedByBudget is go-nbd issue 6 in small: many connections
// each make one large request and go idle. Whatever a policy retains, its
// idle memory must not exceed the budget.
func TestIdleBoundedByBudget(t *testing.T) {
	const budget, request, conns = 1 << 20, 256 << 10, 32
	b, err := NewBudget(budget)
	if err != nil {
		t.Fatal(err)
	}
	forEachStrategy(t, Config{Budget: b, MaxRequest: request, ReclaimTick: -1}, func(t *testing.T, f Factory) {
		ctx := context.Background()
		var open []Strategy
		for range conns {
			s := f.NewConn()
			open = append(open, s)
			buf, err := s.Get(ctx, request)
			if err != nil {
				t.Fatal(err)
			}
			s.Put(buf)
		}
		if idle := f.Stats().BytesIdle; idle > budget {
			t.Errorf("%s: %d bytes idle after %d connections; want at most the budget, %d", f.Name(), idle, conns, budget)
		}
		for _, s := range open {
			s.Close()
		}
	})
}

// TestIdleBoundedAcrossSizes: filling the budget with one size after
// another (4 KiB, 8 KiB, ... 1 MiB), each batch given back, must not leave
// every size class holding a budget's worth: idle memory stays within the
// budget whatever the mix of sizes.
func TestIdleBoundedAcrossSizes(t *testing.T) {
	const budget = 1 << 20
	b, err := NewBudget(budget)
	if err != nil {
		t.Fatal(err)
	}
	forEachStrategy(t, Config{Budget: b, MaxRequest: budget, ReclaimTick: -1}, func(t *testing.T, f Factory) {
		s := f.NewConn()
		defer s.Close()
		for size := MinChunk; size <= budget; size *= 2 {
			var bufs [][]byte
			for range budget / size {
				buf, err := s.TryGet(size)
				if errors.Is(err, ErrBudgetExhausted) {
					break // stream's chunks are larger than small requests
				}
				if err != nil {
					t.Fatalf("Get(%d): %v", size, err)
				}
				bufs = append(bufs, buf)
			}
			for _, buf := range bufs {
				s.Put(buf)
			}
		}
		if st := f.Stats(); st.BytesIdle > budget || st.BytesHeld > 2*budget {
			t.Errorf("%s: idle %d, held %d with a budget of %d; want idle at most the budget", f.Name(), st.BytesIdle, st.BytesHeld, budget)
		}
	})
}

// TestStatsNeverNegative: Stats read while connections Get and Put
// concurrently never show a negative count (a buffer is counted idle
// before another Get can take it).
func TestStatsNeverNegative(t *testing.T) {
	forEachStrategy(t, Config{ReclaimTick: -1}, func(t *testing.T, f Factory) {
		var stop atomic.Bool
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := f.NewConn()
				defer s.Close()
				for !stop.Load() {
					b, err := s.Get(context.Background(), 4096)
					if err != nil {
						t.Error(err)
						return
					}
					s.Put(b)
				}
			}()
		}
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			if st := f.Stats(); st.BytesIdle < 0 || st.BytesHeld < 0 || st.BytesInUse < 0 {
				t.Errorf("negative count: %v", st)
				break
			}
		}
		stop.Store(true)
		wg.Wait()
	})
}

// TestPutAfterCloseCountedOnce: a buffer given back twice after its
// connection closed is dropped once; the second Put is a stray, counted
// in Dropped, and BytesHeld never goes negative.
func TestPutAfterCloseCountedOnce(t *testing.T) {
	forEachStrategy(t, Config{ReclaimTick: -1}, func(t *testing.T, f Factory) {
		s := f.NewConn()
		buf, err := s.Get(context.Background(), 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		s.Put(buf)
		s.Put(buf)
		st := f.Stats()
		if st.BytesHeld != 0 || st.Dropped != 1 {
			t.Errorf("after Close and two Puts: %v; want held 0 and 1 dropped", st)
		}
	})
}
