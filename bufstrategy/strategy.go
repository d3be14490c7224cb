// Package bufstrategy supplies the payload buffers that nbdd's transmission
// loop reads WRITE payloads into and fills READ replies from. The buffer
// policy is a choice, not an accident: grow-and-hold (Grow),
// resize-on-mismatch (Resize), a power-of-two pool (Pool) and a streaming
// copy (Stream) trade memory for allocations in different ways (see
// docs/strategies.md and each type's comment), and a server-wide Budget
// bounds the bytes handed out across all connections.
//
// Use: build one Factory per server with New(name, Config{Budget: b}),
// call NewConn per connection and Close on the connection's Strategy when
// it ends, and Close the Factory when the server stops.
//
// Recycled buffers are not zeroed: a buffer may hold an earlier request's
// data. That is safe because a WRITE payload is read with io.ReadFull over
// the whole buffer, and a READ reply is sent only after ReaderAt.ReadAt
// filled it, whose contract (n < len(p) implies err != nil) makes a short
// fill an error that is never sent (the reply is written only
// after the backend read succeeded). A backend that could return short
// without an error would have to zero the tail itself; zeroing here would
// cost a memclr per request for every other backend. Fresh buffers come
// from make and are zero, as in nbdkit, which zeroes only on growth.
package bufstrategy

import "context"

// Strategy supplies payload buffers to one connection. Its methods are safe
// for concurrent use, because a connection has many requests in flight.
type Strategy interface {
	// Get returns a buffer of 1 <= len(b) <= n bytes for a request of n > 0
	// bytes. A strategy may hand out less than n (see ChunkLimit); the
	// caller then moves the request through the buffer in several steps.
	// Get blocks while the server-wide budget is exhausted, and returns
	// ctx.Err() if ctx ends first.
	Get(ctx context.Context, n int) ([]byte, error)
	// TryGet is Get without the wait: when the budget has no room for the
	// buffer now it fails at once with ErrBudgetExhausted. The server uses
	// it so that a request never waits behind buffers other connections
	// hold, perhaps forever (a client that sent a 32 MiB WRITE header and
	// stalled): it streams through a small buffer of its own instead.
	TryGet(n int) ([]byte, error)
	// Put returns a buffer from Get. b must not be used afterwards. b may
	// be resliced b[:k] but must keep its first byte: Put recognises the
	// buffers the connection handed out and drops any other (counted in
	// Stats.Dropped, never a panic), so a stray Put cannot corrupt the
	// Budget.
	Put(b []byte)
	// Close releases everything the connection still holds: its idle
	// buffers and the budget of the buffers still out, which a Put after
	// Close then drops. Close does not interrupt a Get waiting for the
	// budget; cancel that Get's ctx. Close is idempotent.
	Close()
}

// Factory creates one Strategy per connection and aggregates statistics.
// A Factory is safe for concurrent use.
type Factory interface {
	// Name is the policy's name as given to nbdd serve --strategy.
	Name() string
	// NewConn returns the Strategy for a new connection.
	NewConn() Strategy
	// ChunkLimit is the largest buffer Get hands out (0: no limit beyond
	// the request). Callers use it to decide whether a request must be
	// streamed.
	ChunkLimit() int
	// Stats reports the factory's counters.
	Stats() Stats
	// Close stops the factory's idle reclaimer and frees its idle
	// buffers; buffers returned afterwards are dropped. It returns nil.
	Close() error
}

// Stats are the counters each policy reports. All byte counts are buffer
// capacities, because capacity is what a buffer pins in memory: a 5 KiB
// request served from the pool's 8 KiB class counts 8 KiB. The fields are
// read one by one from atomic counters, so a snapshot taken under load may
// be slightly inconsistent across fields.
type Stats struct {
	Strategy    string
	BytesHeld   int64 // bytes allocated and retained, in use or idle
	BytesInUse  int64 // bytes currently handed out by Get (charged to the Budget)
	Allocs      int64 // buffers allocated with make
	BudgetWaits int64 // Get calls that had to wait for the budget

	BytesIdle int64 // bytes retained while no request uses them (BytesHeld - BytesInUse at rest)
	Hits      int64 // Get calls served from a retained buffer, without make
	Reclaimed int64 // bytes the idle reclaimer has let go
	Dropped   int64 // Put calls whose buffer was not recognised and was left to the GC
}
