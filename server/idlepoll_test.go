package server

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// TestPollBackoff: a connection keeps polling while its polls find the
// next request, and after each poll that finds nothing parks at once for
// twice as many idle periods as after the one before, up to
// 1<<maxPollShift; a poll that finds a request starts the count again.
// Outcomes: what the client does in each idle period, h sending its next
// request within pollFor, m not; want: P where the reader polls, - where
// it parks at once.
func TestPollBackoff(t *testing.T) {
	tests := []struct {
		name     string
		outcomes string
		want     string
	}{
		{"tight round trips keep polling", "hhhhhh", "PPPPPP"},
		{"one miss skips one period", "mhhhh", "P-PPP"},
		{"misses back off, doubling", "mmmmmmmmmmmmmmmmmmm", "P-P--P----P--------"},
		{"a hit starts the count again", "mmmmmhmmm", "P-P--PP-P"},
		{"a miss after a hit skips one", "mhmh", "P-P-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pollPattern(&pollBackoff{}, tt.outcomes); got != tt.want {
				t.Errorf("polled %s; want %s (outcomes %s)", got, tt.want, tt.outcomes)
			}
		})
	}
}

// pollPattern runs p through one idle period per byte of outcomes and
// returns where it polled.
func pollPattern(p *pollBackoff, outcomes string) string {
	var got strings.Builder
	for _, o := range []byte(outcomes) {
		if !p.try() {
			got.WriteByte('-')
			continue
		}
		got.WriteByte('P')
		p.record(o == 'h')
	}
	return got.String()
}

// TestPollBackoffBound: a connection whose polls never find anything
// (idle, slow, or a client waiting for the poller's CPU) parks at once
// for 1<<maxPollShift idle periods between two polls, no more and, once
// backed off, no fewer.
func TestPollBackoffBound(t *testing.T) {
	var p pollBackoff
	last, gaps := 0, map[int]int{}
	for i := 1; i <= 20<<maxPollShift; i++ {
		if p.try() {
			p.record(false)
			gaps[i-last]++
			last = i
		}
	}
	if gaps[1<<maxPollShift+1] < 5 {
		t.Errorf("gaps between polls %v; want at least 5 of 1<<maxPollShift+1 = %d", gaps, 1<<maxPollShift+1)
	}
	for gap := range gaps {
		if gap > 1<<maxPollShift+1 {
			t.Errorf("a gap of %d idle periods between polls; want at most %d", gap, 1<<maxPollShift+1)
		}
	}
}

// fakePoller records what a vecIO asks of its poller.
type fakePoller struct {
	allow    bool
	starts   int
	onStart  func()
	outcomes []bool
}

func (f *fakePoller) startPoll() bool {
	f.starts++
	if f.onStart != nil {
		f.onStart()
	}
	return f.allow
}

func (f *fakePoller) endPoll(hit bool) { f.outcomes = append(f.outcomes, hit) }

// TestReadPolls: a read that may poll tries an empty socket again, so a
// request that arrives meanwhile is read without the runtime parking the
// reader (a hit); it polls for pollFor before parking (a miss), and a read
// that may not poll parks at the first empty try. A read that finds data
// at once asks nothing.
func TestReadPolls(t *testing.T) {
	tests := []struct {
		name         string
		allow        bool
		sendFirst    bool // the client writes before the read
		sendAtStart  bool // the client writes when the read asks to poll
		wantStarts   int
		wantOutcomes string // h hit, m miss
		wantParks    bool
	}{
		{"request waiting: no poll", true, true, false, 0, "", false},
		{"request while polling: a hit", true, false, true, 1, "h", false},
		{"no request: polls, then parks", true, false, false, 1, "m", true},
		{"may not poll: parks at once", false, false, false, 1, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, b, _, v := rawReaderPair(t)
			f := &fakePoller{allow: tt.allow}
			if tt.sendAtStart {
				f.onStart = func() { b.Write([]byte("req")) }
			}
			v.poller = f
			if tt.sendFirst {
				b.Write([]byte("req"))
			}
			var parkedAfter time.Duration
			parked := false
			start := time.Now()
			v.onBlock = func() {
				if !parked {
					parked, parkedAfter = true, time.Since(start)
					b.Write([]byte("req"))
				}
			}
			buf := make([]byte, 8)
			if n, err := v.readSome(buf); n != 3 || err != nil {
				t.Fatalf("readSome = %d, %v; want 3, nil", n, err)
			}
			outcomes := ""
			for _, hit := range f.outcomes {
				outcomes += map[bool]string{true: "h", false: "m"}[hit]
			}
			if parked != tt.wantParks || f.starts != tt.wantStarts || outcomes != tt.wantOutcomes {
				t.Fatalf("parked %v, asked to poll %d times, outcomes %q; want %v, %d, %q",
					parked, f.starts, outcomes, tt.wantParks, tt.wantStarts, tt.wantOutcomes)
			}
			if parked && tt.allow && parkedAfter < pollFor {
				t.Errorf("parked %v after the first empty try; want at least pollFor (%v)", parkedAfter, pollFor)
			}
		})
	}
}

// TestStartPoll: the reader polls only after a request of at most
// pollMaxLength, with no request in flight, where its back-off allows,
// and while fewer than maxPollers readers poll; endPoll gives its place
// back.
func TestStartPoll(t *testing.T) {
	tests := []struct {
		name     string
		length   uint64
		inFlight int
		skip     uint16
		pollers  int32 // other readers polling
		want     bool
	}{
		{"4 KiB, none in flight", 4 << 10, 0, 0, 0, true},
		{"pollMaxLength, none in flight", pollMaxLength, 0, 0, 0, true},
		{"longer, none in flight", pollMaxLength + 1, 0, 0, 0, false},
		{"256 KiB, none in flight", 256 << 10, 0, 0, 0, true},
		{"4 MiB, none in flight", 4 << 20, 0, 0, 0, false},
		{"4 KiB, one in flight", 4 << 10, 1, 0, 0, false},
		{"4 KiB, none in flight, backing off", 4 << 10, 0, 1, 0, false},
		{"4 KiB, none in flight, one fewer than maxPollers polling", 4 << 10, 0, 0, maxPollers - 1, true},
		{"4 KiB, none in flight, maxPollers polling", 4 << 10, 0, 0, maxPollers, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := requestBytes(protocol.ModeSimple, protocol.ExtendedRequest{Type: protocol.CmdRead, Cookie: 1, Length: tt.length}, nil)
			c := &conn{srv: &Server{}, slots: newSlotGate(4), mode: protocol.ModeSimple, src: &sockReader{conn: bytes.NewReader(hdr)}}
			c.br = bufio.NewReader(c.src)
			if _, err := c.readRequest(make([]byte, len(hdr))); err != nil {
				t.Fatal(err)
			}
			for range tt.inFlight {
				c.slots.take()
			}
			c.poll.skip = tt.skip
			c.srv.polling.Store(tt.pollers)
			got := c.startPoll()
			if got != tt.want {
				t.Errorf("startPoll = %v; want %v", got, tt.want)
			}
			if got {
				if n := c.srv.polling.Load(); n != tt.pollers+1 {
					t.Errorf("readers polling after startPoll: %d; want %d", n, tt.pollers+1)
				}
				c.endPoll(true)
			}
			if n := c.srv.polling.Load(); n != tt.pollers {
				t.Errorf("readers polling after startPoll and endPoll: %d; want %d", n, tt.pollers)
			}
		})
	}
}

// TestNoIdlePoll: Server.NoIdlePoll makes the reader park at once on an
// empty socket after a short request; without it the reader polls, and a
// poll that finds nothing backs the connection off.
func TestNoIdlePoll(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoIdlePoll=%v", off), func(t *testing.T) {
			_, b, _, v := rawReaderPair(t)
			c := &conn{srv: &Server{NoIdlePoll: off}, slots: newSlotGate(4), lastShort: true}
			c.pollHeaders(v)
			var parkedAfter time.Duration
			start := time.Now()
			v.onBlock = func() {
				if parkedAfter == 0 {
					parkedAfter = time.Since(start)
					b.Write([]byte("req"))
				}
			}
			if n, err := v.readSome(make([]byte, 8)); n != 3 || err != nil {
				t.Fatalf("readSome = %d, %v; want 3, nil", n, err)
			}
			polled := c.poll != pollBackoff{}
			if polled == off {
				t.Fatalf("polled: %v (back-off %+v); want %v", polled, c.poll, !off)
			}
			if !off && parkedAfter < pollFor {
				t.Errorf("parked %v after the first empty try; want at least pollFor (%v)", parkedAfter, pollFor)
			}
		})
	}
}
