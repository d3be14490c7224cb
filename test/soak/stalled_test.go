package soak

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
)

// Sizes of TestStalledWriters.
const (
	stalledConns     = 1000
	stalledConnsRace = 100      // grow and resize under -race, see TestStalledWriters
	stalledLength    = 32 << 20 // each WRITE's declared length: protocol.DefaultMaxPayload
	stalledPayload   = 100      // bytes of payload sent before stalling
	stalledHeapMax   = 512 << 20
	stalledHold      = time.Second // how long memory is sampled with everyone stalled
	freshTimeout     = 3 * time.Second
)

// TestStalledWriters opens 1000 connections that each send the header of
// a 32 MiB WRITE and a few bytes of its payload, then stall. The export hides its capabilities (plain), so every payload needs a
// buffer: a memory export would read it straight into its pages. Under each buffer strategy, with the default 256 MiB budget and the
// default per-connection in-flight limit, the heap must stay far below
// 1000 x 32 MiB (under 512 MiB), and a new client must still complete a
// verified write and read within a few seconds. Once the stalled clients
// hang up, every goroutine must go away.
func TestStalledWriters(t *testing.T) {
	skipShort(t)
	raiseFileLimit(t, 2*stalledConns+512)
	var worstHeap uint64
	var served, refused []string
	for _, name := range strategies {
		t.Run(name, func(t *testing.T) {
			conns := stalledConns
			if raceEnabled && (name == "grow" || name == "resize") {
				// After the hang-up, each writer queued for the budget is
				// granted it in turn and allocates a fresh 32 MiB buffer
				// before it sees EOF: with ~990 queued that takes 12-25 s
				// under -race on two cores, more than the package's time
				// budget. 100 writers still exhaust the budget (8 do).
				conns = stalledConnsRace
				t.Logf("%d stalled writers under -race for %s (%d without)", conns, name, stalledConns)
			}
			heap, latency, err := runStalled(t, name, conns)
			worstHeap = max(worstHeap, heap)
			if err != nil {
				refused = append(refused, name)
				return
			}
			served = append(served, fmt.Sprintf("%s in %v", name, latency.Round(10*time.Microsecond)))
		})
	}
	scaled := ""
	if raceEnabled {
		scaled = fmt.Sprintf(" (race: %d for grow and resize)", stalledConnsRace)
	}
	summarize(t, "%d connections%s each stalled in a %d MiB WRITE after %d payload bytes, per strategy: "+
		"peak heap in use %s (bound %s); new client served under %v, not served within %v under %v",
		stalledConns, scaled, stalledLength>>20, stalledPayload, mib(int64(worstHeap)), mib(stalledHeapMax),
		served, freshTimeout, refused)
}

// runStalled is one strategy's run of TestStalledWriters. It returns the
// peak heap in use and how long the new client's round trip took, or why
// it failed.
func runStalled(t *testing.T, strategy string, conns int) (uint64, time.Duration, error) {
	base := goroutineBaseline()
	f, budget := newFactory(t, strategy, server.DefaultBudget)
	logger, warns := quietLogger()
	srv := &server.Server{
		Exports: []server.Export{{Name: "stalled", Backend: plain{backend.NewMemory(2 * stalledLength)}}},
		Buffers: f,
		Logger:  logger,
	}
	mem := sampleMemory(srv.BufferStats)
	r := serveUnix(t, srv)

	start := time.Now()
	stalled := make([]net.Conn, conns)
	t.Cleanup(func() { closeAll(stalled) })
	errs := parallel(conns, 64, func(i int) error {
		c, err := r.dial()
		if err != nil {
			return err
		}
		stalled[i] = c.nc
		return stallWrite(c.nc)
	})
	if n, first := firstErrors(errs); n > 0 {
		t.Fatalf("opening %d stalled writers: %d failed: %s", conns, n, first)
	}
	charge := int64(stalledLength)
	if limit := f.ChunkLimit(); limit > 0 {
		charge = int64(limit) // the strategy streams the payload in pieces
	}
	// The first writers fill the budget with their buffers; the rest
	// stream through their connections' own small buffers (a full budget
	// never stalls anyone), which the budget does not see.
	want := min(int64(conns)*charge, budget.Size()/charge*charge)
	held, ok := awaitHeld(budget.InUse, want)
	if !ok {
		t.Fatalf("%s: only %s of the budget held 30s after %d writers stalled; want %s: the writers did not all get their buffers",
			strategy, mib(held), conns, mib(want))
	}
	t.Logf("%s: %d writers stalled after %v: %s of the budget held",
		strategy, conns, time.Since(start).Round(time.Millisecond), mib(held))

	latency, freshErr := freshClient(r)
	time.Sleep(max(0, stalledHold-latency))
	during := mem.stop()
	if freshErr != nil {
		t.Errorf("new client with %d writers stalled (%s of the budget held, %d Gets waiting): %v",
			conns, mib(budget.InUse()), budget.Waiting(), freshErr)
	}
	if during.heapInuse > stalledHeapMax {
		t.Errorf("peak heap in use with %d writers stalled: got %s; want <= %s",
			conns, mib(int64(during.heapInuse)), mib(stalledHeapMax))
	}

	closeAll(stalled)
	hangup := time.Now()
	if !awaitZero(budget.InUse, 30*time.Second) {
		t.Errorf("budget still %s in use 30s after the stalled writers hung up; want 0", mib(budget.InUse()))
	}
	drain := time.Since(hangup)
	r.shutdown(t, 10*time.Second)
	f.Close()
	goroutines := checkGoroutines(t, base, 10*time.Second)
	t.Logf("%s: peak heap in use %s, peak Sys %s, peak VmRSS %s, peak buffers in use %s, held %s; "+
		"new client %v (err %v); budget free %v after the hang-up; goroutines %d after shutdown (baseline %d); server %v",
		strategy, mib(int64(during.heapInuse)), mib(int64(during.sys)), mib(during.rss), mib(during.bufInUse),
		mib(during.bufHeld), latency.Round(10*time.Microsecond), freshErr, drain.Round(time.Millisecond),
		goroutines, base, warns)
	return during.heapInuse, latency, freshErr
}

// stallWrite sends a WRITE header declaring stalledLength bytes and the
// first stalledPayload of them, and nothing more.
func stallWrite(nc net.Conn) error {
	var hdr [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Length: stalledLength}.Put(&hdr)
	_, err := nc.Write(append(hdr[:], make([]byte, stalledPayload)...))
	return err
}

// awaitHeld polls until the budget holds want bytes, for at most 30 s, and
// returns what it saw last and whether that was enough.
func awaitHeld(inUse func() int64, want int64) (int64, bool) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		held := inUse()
		if held >= want {
			return held, true
		}
		if time.Now().After(deadline) {
			return held, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// awaitZero polls f until it returns 0 or d passes.
func awaitZero(f func() int64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for f() != 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// freshClient connects a new client and does a verified 4 KiB write and
// read, all within freshTimeout.
func freshClient(r *running) (time.Duration, error) {
	start := time.Now()
	c, err := r.dial()
	if err != nil {
		return time.Since(start), fmt.Errorf("connect: %w", err)
	}
	defer c.nc.Close()
	c.nc.SetDeadline(start.Add(freshTimeout))
	err = c.verifyRoundTrip(stalledLength+4096, 4096, 0x5a)
	if err != nil {
		err = fmt.Errorf("4 KiB write and read back not done within %v: %w", freshTimeout, err)
	}
	return time.Since(start), err
}

// closeAll closes every non-nil connection of conns.
func closeAll(conns []net.Conn) {
	for _, nc := range conns {
		if nc != nil {
			nc.Close()
		}
	}
}
