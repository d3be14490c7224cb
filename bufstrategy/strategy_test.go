package bufstrategy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// forEachStrategy runs fn under every policy, each with a fresh Factory
// built from cfg and closed at the end of the subtest (net/http's run(t, f)).
func forEachStrategy(t *testing.T, cfg Config, fn func(t *testing.T, f Factory)) {
	t.Helper()
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			fn(t, newFactory(t, name, cfg))
		})
	}
}

// newFactory builds a Factory and closes it at cleanup.
func newFactory(t testing.TB, name string, cfg Config) Factory {
	t.Helper()
	f, err := New(name, cfg)
	if err != nil {
		t.Fatalf("New(%q): %v", name, err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

// newConn returns a Strategy closed at cleanup.
func newConn(t testing.TB, f Factory) Strategy {
	t.Helper()
	s := f.NewConn()
	t.Cleanup(s.Close)
	return s
}

// mustGet calls Get with a background context and fails the test on error.
func mustGet(t testing.TB, s Strategy, n int) []byte {
	t.Helper()
	b, err := s.Get(context.Background(), n)
	if err != nil {
		t.Fatalf("Get(%d): %v", n, err)
	}
	return b
}

// wantLen is the length Get must return for n under f.
func wantLen(f Factory, n int) int {
	if l := f.ChunkLimit(); l > 0 {
		return min(n, l)
	}
	return n
}

func TestGetLength(t *testing.T) {
	sizes := []int{1, 511, 4095, 4096, 4097, 128 << 10, 1<<20 + 1, DefaultMaxRequest}
	forEachStrategy(t, Config{}, func(t *testing.T, f Factory) {
		s := newConn(t, f)
		for _, n := range sizes {
			b := mustGet(t, s, n)
			if got, want := len(b), wantLen(f, n); got != want {
				t.Errorf("len(Get(%d)) = %d; want %d", n, got, want)
			}
			s.Put(b)
		}
		// Reuse must still hand out exactly the requested length.
		for _, n := range []int{100, 4096, 5000} {
			b := mustGet(t, s, n)
			if got, want := len(b), wantLen(f, n); got != want {
				t.Errorf("len(Get(%d)) after reuse = %d; want %d", n, got, want)
			}
			s.Put(b)
		}
	})
}

func TestChunkLimit(t *testing.T) {
	want := map[string]int{NameGrow: 0, NameResize: 0, NamePool: 0, NameStream: DefaultStreamChunk}
	forEachStrategy(t, Config{}, func(t *testing.T, f Factory) {
		if got := f.ChunkLimit(); got != want[f.Name()] {
			t.Errorf("ChunkLimit() = %d; want %d", got, want[f.Name()])
		}
	})
}

func TestGetInvalidSize(t *testing.T) {
	forEachStrategy(t, Config{MaxRequest: 1 << 20}, func(t *testing.T, f Factory) {
		s := newConn(t, f)
		for _, n := range []int{0, -1, 1<<20 + 1} {
			if _, err := s.Get(context.Background(), n); !errors.Is(err, ErrRequestSize) {
				t.Errorf("Get(%d) error = %v; want ErrRequestSize", n, err)
			}
		}
	})
}

// TestPayloadDoesNotSwallowNextHeader is the regression test for go-nbd
// v0.3.0, which read WRITE payloads into its whole held buffer: after a
// large request, a small payload read with a single Read took the next
// request's header with it.
func TestPayloadDoesNotSwallowNextHeader(t *testing.T) {
	const payload, header = "payload", "||next header"
	forEachStrategy(t, Config{}, func(t *testing.T, f Factory) {
		s := newConn(t, f)
		s.Put(mustGet(t, s, 64<<10)) // leave a large buffer held
		r := strings.NewReader(payload + header)
		var got []byte
		for len(got) < len(payload) {
			b := mustGet(t, s, len(payload)-len(got))
			n, err := r.Read(b) // a single Read fills up to len(b)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			got = append(got, b[:n]...)
			s.Put(b)
		}
		rest, _ := io.ReadAll(r)
		if string(got) != payload || string(rest) != header {
			t.Errorf("payload %q, left %q; want %q, %q", got, rest, payload, header)
		}
	})
}

func TestConcurrentGetPut(t *testing.T) {
	budget, err := NewBudget(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{MaxRequest: 1 << 20, Budget: budget, StreamChunk: 64 << 10}
	forEachStrategy(t, cfg, func(t *testing.T, f Factory) {
		var wg sync.WaitGroup
		for c := range 3 {
			s := newConn(t, f)
			for w := range 4 {
				wg.Go(func() { hammer(t, s, byte(c*4+w+1)) })
			}
		}
		wg.Wait()
		if st := f.Stats(); st.BytesInUse != 0 || st.BytesHeld != st.BytesIdle {
			t.Errorf("after all Puts: %v; want in-use 0 and held == idle", st)
		}
		if got := budget.InUse(); got != 0 {
			t.Errorf("budget.InUse() = %d; want 0", got)
		}
	})
}

// hammer does Get/Put cycles of random sizes, stamping each buffer with
// tag and checking that nobody else wrote to it while it was out.
func hammer(t *testing.T, s Strategy, tag byte) {
	rng := rand.New(rand.NewPCG(uint64(tag), 1))
	for range 200 {
		n := 1 + rng.IntN(256<<10)
		b, err := s.Get(context.Background(), n)
		if err != nil {
			t.Errorf("Get(%d): %v", n, err)
			return
		}
		b[0], b[len(b)-1] = tag, tag
		time.Sleep(time.Duration(rng.IntN(20)) * time.Microsecond)
		if b[0] != tag || b[len(b)-1] != tag {
			t.Errorf("buffer handed out twice: got %d,%d; want %d", b[0], b[len(b)-1], tag)
		}
		s.Put(b)
	}
}

func TestStatsAccuracy(t *testing.T) {
	cfg := Config{ReclaimTick: -1}
	forEachStrategy(t, cfg, func(t *testing.T, f Factory) {
		s := newConn(t, f)
		var bufs [][]byte
		var pinned int64
		for _, n := range []int{4096, 8192, 100 << 10} {
			b := mustGet(t, s, n)
			bufs = append(bufs, b)
			pinned += int64(cap(b))
		}
		st := f.Stats()
		if st.BytesInUse != pinned || st.BytesHeld != pinned || st.Allocs != 3 || st.Hits != 0 {
			t.Errorf("3 buffers out: %v; want in-use=held=%d allocs=3 hits=0", st, pinned)
		}
		for _, b := range bufs {
			s.Put(b)
		}
		st = f.Stats()
		if st.BytesInUse != 0 || st.BytesHeld != st.BytesIdle || st.BytesIdle == 0 {
			t.Errorf("all returned: %v; want in-use=0, held=idle>0", st)
		}
		s.Put(mustGet(t, s, 4096))
		if got := f.Stats(); got.Hits != 1 && f.Name() != NameResize {
			t.Errorf("Get after Put: %v; want hits=1", got)
		}
		s.Close()
		if got := f.Stats(); f.Name() != NamePool && f.Name() != NameStream && got.BytesHeld != 0 {
			t.Errorf("after conn Close: %v; want held=0", got)
		}
	})
}

func TestForeignPut(t *testing.T) {
	budget, _ := NewBudget(1 << 20)
	forEachStrategy(t, Config{Budget: budget}, func(t *testing.T, f Factory) {
		s := newConn(t, f)
		mine := mustGet(t, s, 4096)
		for _, b := range [][]byte{nil, make([]byte, 3), make([]byte, 5000), make([]byte, 1<<20)} {
			s.Put(b)
		}
		if got := f.Stats().Dropped; got != 4 {
			t.Errorf("Dropped = %d; want 4", got)
		}
		if got := budget.InUse(); got != int64(cap(mine)) {
			t.Errorf("budget.InUse() = %d; want %d (foreign Puts must not release)", got, cap(mine))
		}
		s.Put(mine)
		if got := budget.InUse(); got != 0 {
			t.Errorf("budget.InUse() after Put = %d; want 0", got)
		}
	})
}

func TestConnCloseReturnsBudget(t *testing.T) {
	budget, _ := NewBudget(1 << 20)
	forEachStrategy(t, Config{Budget: budget}, func(t *testing.T, f Factory) {
		s := f.NewConn()
		b := mustGet(t, s, 64<<10)
		s.Close()
		s.Close() // idempotent
		if got := budget.InUse(); got != 0 {
			t.Errorf("budget.InUse() after Close = %d; want 0", got)
		}
		s.Put(b) // late Put: harmless
		if got := budget.InUse(); got != 0 {
			t.Errorf("budget.InUse() after late Put = %d; want 0", got)
		}
		if st := f.Stats(); st.BytesInUse != 0 {
			t.Errorf("after Close: %v; want in-use 0", st)
		}
		if _, err := s.Get(context.Background(), 1); !errors.Is(err, ErrClosed) {
			t.Errorf("Get after Close: %v; want ErrClosed", err)
		}
	})
}

func TestGetWaitsForBudgetAndCancels(t *testing.T) {
	budget, _ := NewBudget(256 << 10)
	cfg := Config{Budget: budget, StreamChunk: 64 << 10}
	forEachStrategy(t, cfg, func(t *testing.T, f Factory) {
		s := newConn(t, f)
		var out [][]byte
		for range 4 { // fill the budget
			out = append(out, mustGet(t, s, 64<<10))
		}
		before := budget.InUse()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := s.Get(ctx, 64<<10); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Get on a full budget: %v; want DeadlineExceeded", err)
		}
		if got := budget.InUse(); got != before {
			t.Errorf("budget.InUse() = %d after cancelled Get; want %d", got, before)
		}
		if got := f.Stats().BudgetWaits; got != 1 {
			t.Errorf("BudgetWaits = %d; want 1", got)
		}
		got := make(chan []byte)
		go func() { got <- mustGet(t, s, 64<<10) }()
		s.Put(out[0])
		s.Put(<-got)
		for _, b := range out[1:] {
			s.Put(b)
		}
		if n := budget.InUse(); n != 0 {
			t.Errorf("budget.InUse() = %d at the end; want 0", n)
		}
	})
}

func TestRequestLargerThanBudget(t *testing.T) {
	budget, _ := NewBudget(96 << 10)
	forEachStrategy(t, Config{Budget: budget, MaxRequest: 1 << 20}, func(t *testing.T, f Factory) {
		l := f.ChunkLimit()
		if l <= 0 || l > 96<<10 {
			t.Fatalf("ChunkLimit() = %d; want in (0, 96 KiB]", l)
		}
		s := newConn(t, f)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Move a 1 MiB request in pieces without deadlocking.
		for left := 1 << 20; left > 0; {
			b, err := s.Get(ctx, left)
			if err != nil {
				t.Fatalf("Get(%d): %v", left, err)
			}
			if len(b) > l || cap(b) > 96<<10 {
				t.Fatalf("Get(%d) len %d cap %d; want <= %d", left, len(b), cap(b), l)
			}
			left -= len(b)
			s.Put(b)
		}
	})
}

func TestFactoryCloseFreesIdle(t *testing.T) {
	forEachStrategy(t, Config{}, func(t *testing.T, f Factory) {
		s := f.NewConn()
		a, b := mustGet(t, s, 1<<20), mustGet(t, s, 4096)
		s.Put(a)
		f.Close()
		s.Put(b) // after Close: dropped, not retained
		s.Close()
		if st := f.Stats(); st.BytesHeld != 0 || st.BytesIdle != 0 {
			t.Errorf("after Close: %v; want held=idle=0", st)
		}
	})
}

func TestNew(t *testing.T) {
	_, err := New("lru", Config{})
	if !errors.Is(err, ErrUnknownStrategy) || !strings.Contains(err.Error(), "grow, resize, pool, stream") {
		t.Errorf("New(lru) error = %v; want ErrUnknownStrategy listing the names", err)
	}
	bad := []Config{{MaxRequest: -1}, {StreamChunk: 100}, {GrowMaxIdle: -1}, {MaxRequest: 1<<31 + 1}}
	for _, cfg := range bad {
		if _, err := New(NamePool, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(pool, %+v) error = %v; want ErrConfig", cfg, err)
		}
	}
	for _, name := range Names() {
		f, err := New(name, Config{})
		if err != nil || f.Name() != name {
			t.Errorf("New(%q) = %v, %v; want a %q factory", name, f, err, name)
			continue
		}
		f.Close()
	}
}

func TestStatsFormatting(t *testing.T) {
	st := Stats{Strategy: "pool", BytesHeld: 8192, Allocs: 2}
	if got := st.String(); !strings.HasPrefix(got, "pool: held=8192 in-use=0") {
		t.Errorf("String() = %q", got)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("stats", "buffers", st)
	if got := buf.String(); !strings.Contains(got, "buffers.held=8192") || !strings.Contains(got, "buffers.allocs=2") {
		t.Errorf("slog output %q; want buffers.held=8192 and buffers.allocs=2", got)
	}
}
