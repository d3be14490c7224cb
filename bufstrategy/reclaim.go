package bufstrategy

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// freeOSInterval is the least time between two debug.FreeOSMemory calls.
const freeOSInterval = time.Second

// reclaimer returns idle buffers gradually when traffic falls. Dropping a
// reference is not enough for RSS to fall: the GC frees the buffer at its
// next cycle, and the runtime's background scavenger hands the pages back to
// the kernel slowly (it paces itself to about 1% of CPU time) and only down
// to about the heap goal, which a recent spike keeps high. So after a
// tick that freed a lot, the reclaimer calls debug.FreeOSMemory, which runs
// a GC and returns every free page at once. That call costs a full GC
// (milliseconds, proportional to the live heap, with short stop-the-world
// phases), so it is limited to ticks that freed at least FreeOSMin bytes
// (16 MiB: a handful of large buffers, not routine churn) and to once per
// second: a server shedding 64 MiB per tick pays for one GC per second at
// most, and a lightly loaded one never pays for it.
//
// The goroutine starts on the first retained buffer and exits when nothing
// is idle, so an idle factory costs no ticks and tests leak no goroutine.
type reclaimer struct {
	c     *core
	sweep func(cutoff, limit int64) int64 // frees idle buffers, returns bytes freed

	running atomic.Bool // a loop goroutine is live (or starting)

	mu       sync.Mutex
	closed   bool          // guarded by mu
	stop     chan struct{} // closed by close; guarded by mu
	done     chan struct{} // closed when the loop exits; guarded by mu
	lastFree time.Time     // last FreeOSMemory; owned by the loop goroutine
	freeOS   func()        // debug.FreeOSMemory; a test counts the calls
}

// newReclaimer returns nil when the configuration disables reclaiming.
func newReclaimer(c *core, sweep func(cutoff, limit int64) int64) *reclaimer {
	if c.set.tick < 0 {
		return nil
	}
	return &reclaimer{c: c, sweep: sweep, stop: make(chan struct{}), freeOS: debug.FreeOSMemory}
}

// kick starts the loop if it is not running. It is called after idle was
// increased, so either the loop sees idle > 0 before it exits, or kick sees
// running == false and starts a new one.
func (r *reclaimer) kick() {
	if r.running.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.running.Load() {
		return
	}
	r.running.Store(true)
	r.done = make(chan struct{})
	go r.loop(r.done)
}

// loop sweeps once per tick until nothing is idle or close is called.
func (r *reclaimer) loop(done chan struct{}) {
	defer close(done)
	t := time.NewTicker(r.c.set.tick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			r.running.Store(false)
			return
		case <-t.C:
		}
		r.tick()
		if r.exitIfIdle() {
			return
		}
	}
}

// tick frees up to ReclaimPerTick bytes idle for IdleAfter or longer.
func (r *reclaimer) tick() {
	set := &r.c.set
	freed := r.sweep(now()-int64(set.idleAfter), set.perTick)
	r.c.freed(freed, true)
	if set.freeOSMin >= 0 && freed >= set.freeOSMin && time.Since(r.lastFree) >= freeOSInterval {
		r.lastFree = time.Now()
		r.freeOS()
	}
}

// exitIfIdle stops the loop when nothing is left to reclaim. It clears
// running before it reads idle, and kick raises idle before it reads
// running, so at least one of them sees the other: no retained buffer is
// left without a loop.
func (r *reclaimer) exitIfIdle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running.Store(false)
	if r.c.cnt.idle.Load() > 0 {
		r.running.Store(true)
		return false
	}
	return true
}

// close stops the loop for good and waits for it.
func (r *reclaimer) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	close(r.stop)
	done := r.done
	r.mu.Unlock()
	if done != nil {
		<-done
	}
}
