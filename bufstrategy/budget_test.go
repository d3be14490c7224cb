package bufstrategy

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

func newBudget(t *testing.T, n int64) *Budget {
	t.Helper()
	b, err := NewBudget(n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitQueued waits until n callers are queued on b.
func waitQueued(t *testing.T, b *Budget, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.Waiting() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Waiting() = %d; want %d", b.Waiting(), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestNewBudgetTooSmall(t *testing.T) {
	for _, n := range []int64{-1, 0, MinChunk - 1} {
		_, err := NewBudget(n)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "minimum chunk") {
			t.Errorf("NewBudget(%d) error = %v; want ErrConfig naming the minimum chunk", n, err)
		}
	}
	if _, err := NewBudget(MinChunk); err != nil {
		t.Errorf("NewBudget(MinChunk): %v", err)
	}
}

func TestNilBudgetIsUnlimited(t *testing.T) {
	var b *Budget
	if err := b.Acquire(context.Background(), 1<<40); err != nil || !b.TryAcquire(1<<40) {
		t.Errorf("nil Budget refused: %v", err)
	}
	b.Release(1 << 40)
	if b.InUse() != 0 || b.Size() != 0 || b.Waits() != 0 || b.Waiting() != 0 {
		t.Error("nil Budget reports usage")
	}
}

// TestBudgetFIFO checks that a small request queued behind a large one
// waits for it, even when the small one would fit.
func TestBudgetFIFO(t *testing.T) {
	ctx := context.Background()
	b := newBudget(t, 16<<10)
	if err := b.Acquire(ctx, 16<<10); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 2)
	go func() { b.Acquire(ctx, 16<<10); order <- "big" }()
	waitQueued(t, b, 1)
	go func() { b.Acquire(ctx, 4<<10); order <- "small" }()
	waitQueued(t, b, 2)
	b.Release(4 << 10) // the small one fits, but the big one is first
	if got := b.Waiting(); got != 2 {
		t.Fatalf("Waiting() = %d after a partial release; want 2 (FIFO)", got)
	}
	if b.TryAcquire(4 << 10) {
		t.Fatal("TryAcquire jumped the queue")
	}
	b.Release(12 << 10)
	if got := <-order; got != "big" {
		t.Fatalf("first grant = %q; want big", got)
	}
	b.Release(16 << 10)
	if got := <-order; got != "small" {
		t.Fatalf("second grant = %q; want small", got)
	}
	if got, waits := b.InUse(), b.Waits(); got != 4<<10 || waits != 2 {
		t.Errorf("InUse() = %d, Waits() = %d; want %d, 2", got, waits, 4<<10)
	}
}

func TestBudgetLargerThanSize(t *testing.T) {
	b := newBudget(t, 8<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Acquire(ctx, 1<<30); err != nil { // clamped to the whole budget
		t.Fatalf("Acquire(1 GiB) on an 8 KiB budget: %v", err)
	}
	if got := b.InUse(); got != 8<<10 {
		t.Errorf("InUse() = %d; want %d", got, 8<<10)
	}
	b.Release(1 << 30)
	if got := b.InUse(); got != 0 {
		t.Errorf("InUse() after Release = %d; want 0", got)
	}
}

func TestBudgetCancel(t *testing.T) {
	b := newBudget(t, 8<<10)
	b.Acquire(context.Background(), 8<<10)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- b.Acquire(ctx, 4<<10) }()
	waitQueued(t, b, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire after cancel = %v; want context.Canceled", err)
	}
	if b.Waiting() != 0 || b.InUse() != 8<<10 {
		t.Fatalf("after cancel: Waiting %d, InUse %d; want 0, %d", b.Waiting(), b.InUse(), 8<<10)
	}
	if err := b.Acquire(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire with a done ctx = %v; want context.Canceled", err)
	}
	b.Release(8 << 10)
	if !b.TryAcquire(8 << 10) {
		t.Error("budget leaked by the cancelled waiter")
	}
}

// TestBudgetCancelHeadWakesNext checks that when the head waiter gives up,
// the waiters behind it that now fit are granted.
func TestBudgetCancelHeadWakesNext(t *testing.T) {
	b := newBudget(t, 16<<10)
	b.Acquire(context.Background(), 12<<10)
	ctx, cancel := context.WithCancel(context.Background())
	go b.Acquire(ctx, 16<<10)
	waitQueued(t, b, 1)
	done := make(chan error)
	go func() { done <- b.Acquire(context.Background(), 4<<10) }()
	waitQueued(t, b, 2)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Acquire behind a cancelled head: %v", err)
	}
}

func TestBudgetReleaseTooMuchPanics(t *testing.T) {
	b := newBudget(t, 8<<10)
	defer func() {
		if recover() == nil {
			t.Error("Release without Acquire did not panic")
		}
	}()
	b.Release(1)
}

func TestBudgetManyWaiters(t *testing.T) {
	b := newBudget(t, 64<<10)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			for range 50 {
				n := int64(1 + rng.IntN(80<<10)) // some larger than the budget
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(2000))*time.Microsecond)
				if err := b.Acquire(ctx, n); err == nil {
					time.Sleep(time.Duration(rng.IntN(50)) * time.Microsecond)
					b.Release(n)
				}
				cancel()
			}
		})
	}
	wg.Wait()
	if b.InUse() != 0 || b.Waiting() != 0 {
		t.Errorf("after all: InUse %d, Waiting %d; want 0, 0", b.InUse(), b.Waiting())
	}
	if !b.TryAcquire(64 << 10) {
		t.Error("budget leaked")
	}
}
