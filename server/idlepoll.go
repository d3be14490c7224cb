package server

import (
	"runtime"
	"time"
)

// At queue depth 1 a client sends its next request a few tens of
// microseconds after a reply. A reader parked meanwhile is, on a virtual
// machine, woken through the hypervisor on a halted vCPU, which took 8
// times a round trip on one vCPU; a reader that polls the empty socket
// for a while keeps its vCPU running and needs no wake-up
// (docs/performance.md, "Queue depth 1, profiled"). Polling pays only
// when the next request does come within the poll, so each connection
// keeps the outcome of its recent polls (pollBackoff) and stops polling
// after those that found nothing; and at most maxPollers readers poll at
// once, server-wide. Server.NoIdlePoll turns it off.

// pollFor bounds how long the reader polls an empty socket before the
// runtime parks it.
const pollFor = 30 * time.Microsecond

// pollMaxLength is the longest request after which the reader polls for
// the next: 1 MiB, the longest READ the reader replies to itself. A
// serial reader of 256 KiB (nbdcopy -C1 -R1, a guest's sequential dd) is
// also a round trip per request: its next request comes once it has read
// the reply, often within pollFor, and where it does not the back-off
// stops the polls. Paired against 16 KiB: serial 256 KiB reads 1.16x on
// a unix socket and 1.49x on TCP at the same or less CPU per GiB, queue
// depth 1 and serial overwrite even (docs/performance.md, "Queue depth
// 1, profiled").
const pollMaxLength = 1 << 20

// maxPollShift bounds the back-off: after repeated misses a connection
// parks at once for 1<<maxPollShift idle periods between two polls, so
// that a slow connection costs pollFor in 257 requests.
const maxPollShift = 8

// maxPollers bounds the readers that poll at once, server-wide, to half
// the CPUs Go runs on (at least one). A reader polls so that its vCPU does
// not halt; with more connections busy at once than that, the CPUs have
// other work and a parked reader's wake-up costs no halt, while a poller
// would hold a P that other readers' goroutines wait for.
var maxPollers = int32(max(1, runtime.GOMAXPROCS(0)/2))

// pollBackoff decides, for one connection, whether the reader polls an
// empty socket: a poll that finds the next request (a hit) makes the next
// one poll too; a poll that runs out (a miss) makes the reader park at
// once for the next 1, 2, 4 ... 1<<maxPollShift idle periods, doubling
// with each further miss, before it tries again. The zero value polls.
type pollBackoff struct {
	skip  uint16 // idle periods left in which the reader parks at once
	shift uint8  // log2 of the periods to skip after the next miss
}

// try reports whether the reader polls in this idle period.
func (p *pollBackoff) try() bool {
	if p.skip > 0 {
		p.skip--
		return false
	}
	return true
}

// record takes the outcome of a poll that try allowed.
func (p *pollBackoff) record(hit bool) {
	if hit {
		p.shift = 0
		return
	}
	p.skip = 1 << p.shift
	p.shift = min(p.shift+1, maxPollShift)
}

// pollHeaders lets the reader poll v, its raw reader of request headers,
// unless Server.NoIdlePoll says not to.
func (c *conn) pollHeaders(v *vecIO) {
	if v.raw && !c.srv.NoIdlePoll {
		v.poller = c
	}
}

// startPoll reports whether the reader, having found the socket empty,
// polls it: only right after a request of at most pollMaxLength with none in
// flight, every reply sent, so that the client waits for nothing but its
// own next request, as at queue depth 1; only as c.poll allows; and only
// while fewer than maxPollers readers poll.
func (c *conn) startPoll() bool {
	if !c.lastShort || c.slots.inFlight() != 0 || !c.poll.try() {
		return false
	}
	if c.srv.polling.Add(1) > maxPollers {
		c.srv.polling.Add(-1)
		return false
	}
	return true
}

// endPoll takes the outcome of a poll startPoll allowed: hit, the socket
// had something to read before pollFor ran out.
func (c *conn) endPoll(hit bool) {
	c.srv.polling.Add(-1)
	c.poll.record(hit)
}
