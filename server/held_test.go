package server

import (
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// TestHeldRepliesNeverWait: the reader holds the replies of requests it
// ran inline while more requests are in its buffer, and must hand them
// over before anything that may wait. Otherwise a client that waits for
// those replies before sending more (the queue is full, or it has nothing
// left to send) hangs. Each case sends its requests in one write, so they
// all land in the reader's buffer together, and then only reads.
func TestHeldRepliesNeverWait(t *testing.T) {
	read := func(cookie, off uint64, n uint32) protocol.Request {
		return protocol.Request{Type: protocol.CmdRead, Cookie: cookie, Offset: off, Length: n}
	}
	tests := []struct {
		name  string
		tune  func(*Server)
		burst []protocol.Request
	}{
		{"queue slots", func(s *Server) { s.QueueDepth = 2 },
			[]protocol.Request{read(1, 0, 512), read(2, 512, 512), read(3, 1024, 512), read(4, 1536, 512)}},
		{"payload bytes", func(s *Server) { s.MaxRequestSize, s.MaxInflightBytes = 16<<10, 16<<10 },
			[]protocol.Request{read(1, 0, 8<<10), read(2, 8<<10, 8<<10), read(3, 0, 8<<10), read(4, 8<<10, 8<<10)}},
		{"reader's buffer emptied by a request on its own goroutine", func(*Server) {},
			[]protocol.Request{read(1, 0, 512), read(2, 0, 200_000)}},
	}
	run(t, func(t *testing.T, strategy string) {
		for _, tt := range tests {
			srv := memExport(1 << 20)
			tt.tune(srv)
			st := newServerTester(t, strategy, srv)
			st.handshake("mem")
			sent := sendBurst(st.client, tt.burst, nil)
			for range tt.burst {
				st.readReply() // each must arrive; the order is free
			}
			if err := <-sent; err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
		}

		// A WRITE whose payload is not all there yet: the reply of the READ
		// before it must not wait for the rest of the payload.
		st := newServerTester(t, strategy, memExport(1<<20))
		st.handshake("mem")
		payload := pattern(8<<10, 3)
		sent := sendBurst(st.client, []protocol.Request{read(1, 0, 512),
			{Type: protocol.CmdWrite, Cookie: 2, Offset: 4096, Length: uint32(len(payload))}}, payload[:4<<10])
		st.wantReply(1, protocol.EOK)
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		st.writeRaw(payload[4<<10:])
		st.wantReply(2, protocol.EOK)
	})
}

// sendBurst writes reqs, then tail, with a single write from another
// goroutine (net.Pipe has no buffer), so that the server reads them
// together, and reports the result on the channel returned.
func sendBurst(c *client, reqs []protocol.Request, tail []byte) <-chan error {
	var b []byte
	for _, req := range reqs {
		var hdr [protocol.RequestSize]byte
		req.Put(&hdr)
		b = append(b, hdr[:]...)
		c.nbd.Expect(req)
	}
	b = append(b, tail...)
	errc := make(chan error, 1)
	go func() {
		c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
		_, err := c.nbd.Write(b)
		errc <- err
	}()
	return errc
}

// TestAllDirect: which bursts of held replies the reader sends itself:
// any reply up to directMax, a sendfile READ's included; a streamed READ
// never.
func TestAllDirect(t *testing.T) {
	newOp := func(typ protocol.Cmd, n uint64, data Path, failed bool) *op {
		o := &op{req: protocol.ExtendedRequest{Type: typ, Length: n}, plan: plan{data: data}}
		if failed {
			o.err = &requestError{errno: protocol.EIO}
		}
		return o
	}
	small := newOp(protocol.CmdRead, 4<<10, PathReadLent, false)
	tests := []struct {
		name   string
		o      *op
		direct bool
	}{
		{"4 KiB READ", small, true},
		{"256 KiB lent READ", newOp(protocol.CmdRead, 256<<10, PathReadLent, false), true},
		{"256 KiB sendfile READ", newOp(protocol.CmdRead, 256<<10, PathReadSendfile, false), true},
		{"1 MiB sendfile READ", newOp(protocol.CmdRead, directMax, PathReadSendfile, false), true},
		{"2 MiB sendfile READ", newOp(protocol.CmdRead, 2<<20, PathReadSendfile, false), false},
		{"2 MiB lent READ", newOp(protocol.CmdRead, 2<<20, PathReadLent, false), false},
		{"streamed READ", newOp(protocol.CmdRead, 32<<10, PathReadStreamed, false), false},
		{"failed 32 MiB READ", newOp(protocol.CmdRead, 32<<20, PathReadBuffered, true), true},
		{"1 MiB WRITE", newOp(protocol.CmdWrite, 1<<20, PathWriteIntoExport, false), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := allDirect([]*op{small, tt.o, small}); got != tt.direct {
				t.Errorf("got %v, want %v", got, tt.direct)
			}
		})
	}
}
