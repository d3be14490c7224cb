package bufstrategy

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// MinChunk is the smallest buffer a policy allocates (4 KiB: one page and
// the pool's first size class) and the smallest budget NewBudget accepts.
// A smaller budget could not cover a single pool buffer, so every Get would
// wait forever.
const MinChunk = 4 << 10

// Budget is a server-wide, byte-weighted semaphore that bounds the payload
// memory handed out by every strategy that shares it. It is FIFO-fair, like
// golang.org/x/sync/semaphore.Weighted: once a caller waits, later callers
// queue behind it even if their smaller request would fit, so a 32 MiB
// WRITE is not starved by a stream of 4 KiB READs and connections are
// served in the order they asked.
//
// Oversized requests: Acquire and Release clamp n to Size(). A request
// larger than the whole budget therefore waits until the budget is entirely
// free and then takes all of it, instead of deadlocking. The strategies do
// better than that: they never ask for more than Size() (ChunkLimit reports
// the cap), so the server streams such a request in budget-sized pieces.
//
// A nil *Budget is unlimited: Acquire returns at once and Release does
// nothing, so Config.Budget == nil needs no special case.
type Budget struct {
	size  int64
	waits atomic.Int64

	mu      sync.Mutex
	cur     int64     // bytes acquired; guarded by mu
	waiters list.List // of *budgetWaiter, oldest first; guarded by mu
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed by notify when n bytes were granted
}

// NewBudget returns a Budget of n bytes. n must be at least MinChunk: a
// budget that cannot hold one buffer is a configuration error, reported
// here rather than as a hang on the first request.
func NewBudget(n int64) (*Budget, error) {
	if n < MinChunk {
		return nil, fmt.Errorf("%w: budget of %d bytes is smaller than the minimum chunk of %d bytes (4 KiB)",
			ErrConfig, n, MinChunk)
	}
	return &Budget{size: n}, nil
}

// Size is the budget's capacity in bytes.
func (b *Budget) Size() int64 {
	if b == nil {
		return 0
	}
	return b.size
}

// InUse is the number of bytes currently acquired.
func (b *Budget) InUse() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur
}

// Waits counts the Acquire calls that had to queue, a sign the budget is
// too small for the load.
func (b *Budget) Waits() int64 {
	if b == nil {
		return 0
	}
	return b.waits.Load()
}

// Waiting is the number of callers queued right now.
func (b *Budget) Waiting() int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiters.Len()
}

// Acquire takes n bytes (clamped to Size), waiting in FIFO order until they
// are free. If ctx ends first it returns ctx.Err() and holds nothing; bytes
// granted at the same moment as the cancellation are given back. n <= 0
// acquires nothing.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	_, err := b.acquire(ctx, n)
	return err
}

// TryAcquire takes n bytes (clamped to Size) only if that needs no wait,
// and reports whether it did. It does not jump the queue.
func (b *Budget) TryAcquire(n int64) bool {
	if b == nil || n <= 0 {
		return true
	}
	n = min(n, b.size)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waiters.Len() > 0 || b.size-b.cur < n {
		return false
	}
	b.cur += n
	return true
}

// Release gives back n bytes (clamped to Size, as in Acquire) and wakes the
// waiters at the head of the queue that now fit. Releasing more than is
// held panics, as sync.WaitGroup does on a negative count: it means the
// caller's accounting is broken and the budget no longer bounds anything.
func (b *Budget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	n = min(n, b.size)
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.cur {
		panic(fmt.Sprintf("bufstrategy: Budget.Release(%d) with only %d bytes acquired", n, b.cur))
	}
	b.cur -= n
	b.notify()
}

// acquire is Acquire, also reporting whether the caller had to queue (for
// the per-factory BudgetWaits counter).
func (b *Budget) acquire(ctx context.Context, n int64) (waited bool, err error) {
	if b == nil || n <= 0 {
		return false, nil
	}
	n = min(n, b.size)
	done := ctx.Done()
	b.mu.Lock()
	select {
	case <-done:
		// Fail even if the bytes are free: the cancellation came first.
		b.mu.Unlock()
		return false, ctx.Err()
	default:
	}
	if b.waiters.Len() == 0 && b.size-b.cur >= n {
		b.cur += n
		b.mu.Unlock()
		return false, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	elem := b.waiters.PushBack(w)
	b.mu.Unlock()
	b.waits.Add(1)
	return true, b.wait(ctx, elem, w)
}

// wait blocks until w is granted or ctx ends.
func (b *Budget) wait(ctx context.Context, elem *list.Element, w *budgetWaiter) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted while we were being cancelled: give the bytes back so
		// the caller, which sees ctx.Err(), leaks nothing.
		b.cur -= w.n
		b.notify()
	default:
		front := b.waiters.Front() == elem
		b.waiters.Remove(elem)
		if front {
			// The head left: the next waiters may fit now.
			b.notify()
		}
	}
	return ctx.Err()
}

// notify grants waiters from the head of the queue while they fit, and
// stops at the first that does not, which is what makes the budget fair.
// b.mu must be held.
func (b *Budget) notify() {
	for {
		e := b.waiters.Front()
		if e == nil {
			return
		}
		w := e.Value.(*budgetWaiter)
		if b.size-b.cur < w.n {
			return
		}
		b.cur += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// ErrBudgetExhausted is returned by TryGet when the budget has no room
// for the buffer right now.
var ErrBudgetExhausted = errors.New("bufstrategy: memory budget exhausted")
