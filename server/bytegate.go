package server

import (
	"context"
	"sync"
)

// byteGate bounds the payload bytes in flight on one connection
// (Server.MaxInflightBytes). Only the reader takes, so waiting in it
// stops the reader from reading the socket; finish gives them back.
type byteGate struct {
	mu     sync.Mutex
	cond   *sync.Cond
	avail  int64 // guarded by mu
	limit  int64
	closed bool // guarded by mu
	// beforeWait runs when take must wait: the reader hands over the
	// replies it holds (held.go), which may hold the bytes it waits for.
	beforeWait func()
}

func newByteGate(limit int64) *byteGate {
	g := &byteGate{avail: limit, limit: limit}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// take takes n bytes (at most the whole limit, so a request as large as
// the limit can always proceed once the connection is drained), running
// beforeWait first if it has to wait.
func (g *byteGate) take(ctx context.Context, n int64) (int64, error) {
	if w, ok := g.tryTake(n); ok {
		return w, nil
	}
	if g.beforeWait != nil {
		g.beforeWait()
	}
	n = min(n, g.limit)
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.avail < n {
		if g.closed {
			return 0, context.Canceled
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		g.cond.Wait()
	}
	g.avail -= n
	return n, nil
}

// tryTake takes n bytes (capped as in take) if they are free now.
func (g *byteGate) tryTake(n int64) (int64, bool) {
	n = min(n, g.limit)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.avail < n {
		return 0, false
	}
	g.avail -= n
	return n, true
}

func (g *byteGate) give(n int64) {
	g.mu.Lock()
	g.avail += n
	g.mu.Unlock()
	g.cond.Broadcast()
}

// close wakes and fails every waiter.
func (g *byteGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cond.Broadcast()
}

// slotGate bounds the requests in flight on one connection
// (Server.QueueDepth): a token per request, taken by the reader, given
// back by finish. Waiting for one stops the reader from reading the
// socket.
type slotGate struct {
	ch chan struct{}
	// beforeWait runs when take must wait: held replies hold slots too.
	beforeWait func()
}

func newSlotGate(n int) *slotGate { return &slotGate{ch: make(chan struct{}, n)} }

// take takes a slot, running beforeWait first if it has to wait.
func (g *slotGate) take() {
	select {
	case g.ch <- struct{}{}:
		return
	default:
	}
	if g.beforeWait != nil {
		g.beforeWait()
	}
	g.ch <- struct{}{}
}

// give gives a slot back.
func (g *slotGate) give() { <-g.ch }

// inFlight is the number of requests holding a slot.
func (g *slotGate) inFlight() int { return len(g.ch) }
