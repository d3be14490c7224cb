package bufstrategy

import (
	"context"
	"testing"
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
