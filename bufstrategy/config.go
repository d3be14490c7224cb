package bufstrategy

import (
	"fmt"
	"strings"
	"time"
)

// Policy names, as accepted by New and by nbdd serve --strategy.
const (
	NameGrow   = "grow"   // grow-and-hold, see Grow
	NameResize = "resize" // resize-on-mismatch, see Resize
	NamePool   = "pool"   // power-of-two pool, see Pool
	NameStream = "stream" // fixed chunks, see Stream
)

// Names lists the valid policy names in a stable order, for flag help and
// error messages.
func Names() []string {
	return []string{NameGrow, NameResize, NamePool, NameStream}
}

// Defaults applied by New for zero Config fields.
const (
	DefaultMaxRequest     = 32 << 20 // proto.md: 32 MiB is the usual maximum payload
	DefaultStreamChunk    = 256 << 10
	DefaultGrowMaxIdle    = 64 // server.DefaultQueueDepth
	DefaultRetainPerClass = 32 << 20
	DefaultReclaimTick    = 250 * time.Millisecond
	DefaultIdleAfter      = 2 * time.Second
	DefaultReclaimPerTick = 64 << 20
	DefaultFreeOSMin      = 16 << 20
)

// maxRequestLimit bounds Config.MaxRequest: NBD lengths are 32-bit, and the
// pool's largest class must stay a power of two that fits in an int.
const maxRequestLimit = 1 << 31

// Config selects the limits shared by all policies. Its zero value works:
// every zero field means the documented default. New never writes the
// defaults back into the caller's Config, so one Config can be
// shared.
type Config struct {
	// MaxRequest is the largest request length Get accepts (0: 32 MiB).
	MaxRequest int
	// Budget bounds the bytes handed out across all connections (nil:
	// unlimited). Share one Budget per server.
	Budget *Budget
	// StreamChunk is the stream policy's chunk size (0: 256 KiB). It must
	// be at least MinChunk; it is capped at MaxRequest and Budget.Size().
	StreamChunk int

	// GrowMaxIdle is how many idle buffers one grow or resize connection
	// keeps (0: 64, the server's default queue depth, so that a connection
	// keeping its queue full reuses a buffer per request instead of
	// allocating; with 4, nbdcopy read a file export ~20% slower). Idle
	// memory is bounded server-wide by the Budget's size whatever this
	// is; per connection it is at most GrowMaxIdle*MaxRequest.
	GrowMaxIdle int
	// RetainPerClass is how many idle bytes the pool keeps per size class
	// and the stream policy keeps in total (0: 32 MiB); at least one
	// buffer per class is always kept.
	RetainPerClass int64

	// ReclaimTick is the idle reclaimer's period (0: 250 ms; negative:
	// no reclaimer, idle memory is only freed by Close).
	ReclaimTick time.Duration
	// IdleAfter is how long a buffer must sit unused before the
	// reclaimer frees it (0: 2 s).
	IdleAfter time.Duration
	// ReclaimPerTick bounds the bytes freed per tick (0: 64 MiB), so a
	// large drop in traffic frees memory gradually rather than all at
	// once, just before traffic returns.
	ReclaimPerTick int64
	// FreeOSMin is the least a tick must free before the reclaimer calls
	// debug.FreeOSMemory (0: 16 MiB; negative: never).
	FreeOSMin int64
}

// settings is a validated Config with the defaults filled in.
type settings struct {
	maxRequest     int
	streamChunk    int
	growMaxIdle    int
	retainPerClass int64
	tick           time.Duration
	idleAfter      time.Duration
	perTick        int64
	freeOSMin      int64
}

// orDefault returns v, or def when v is zero.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// settings validates c and fills in the defaults.
func (c Config) settings() (settings, error) {
	s := settings{
		maxRequest:     orDefault(c.MaxRequest, DefaultMaxRequest),
		streamChunk:    orDefault(c.StreamChunk, DefaultStreamChunk),
		growMaxIdle:    orDefault(c.GrowMaxIdle, DefaultGrowMaxIdle),
		retainPerClass: orDefault(c.RetainPerClass, DefaultRetainPerClass),
		tick:           orDefault(c.ReclaimTick, DefaultReclaimTick),
		idleAfter:      orDefault(c.IdleAfter, DefaultIdleAfter),
		perTick:        orDefault(c.ReclaimPerTick, DefaultReclaimPerTick),
		freeOSMin:      orDefault(c.FreeOSMin, DefaultFreeOSMin),
	}
	switch {
	case s.maxRequest < 1 || s.maxRequest > maxRequestLimit:
		return s, fmt.Errorf("%w: MaxRequest %d not in [1, %d]", ErrConfig, s.maxRequest, maxRequestLimit)
	case s.streamChunk < MinChunk:
		return s, fmt.Errorf("%w: StreamChunk %d is smaller than %d bytes", ErrConfig, s.streamChunk, MinChunk)
	case s.growMaxIdle < 0 || s.retainPerClass < 0 || s.idleAfter < 0 || s.perTick < 0:
		return s, fmt.Errorf("%w: negative GrowMaxIdle, RetainPerClass, IdleAfter or ReclaimPerTick", ErrConfig)
	}
	return s, nil
}

// New returns the Factory for the named policy (one of Names()). Call its
// Close when the server stops, to stop the idle reclaimer and free idle
// buffers.
func New(name string, cfg Config) (Factory, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	switch name {
	case NameGrow:
		return newGrow(s, cfg.Budget), nil
	case NameResize:
		return newResize(s, cfg.Budget), nil
	case NamePool:
		return newPool(s, cfg.Budget), nil
	case NameStream:
		return newStream(s, cfg.Budget), nil
	}
	return nil, fmt.Errorf("%w %q (valid: %s)", ErrUnknownStrategy, name, strings.Join(Names(), ", "))
}

var (
	_ Factory = (*Grow)(nil)
	_ Factory = (*Resize)(nil)
	_ Factory = (*Pool)(nil)
	_ Factory = (*Stream)(nil)
)
