package server

import "context"

// spareBuffers are a fifth buffer strategy, outside the memory budget:
// three fixed buffers of spareSize per connection, which requests use
// when the strategy has no room for them (bufstrategy.ErrBudgetExhausted)
// or for their whole length (the budget is smaller than a request). They
// let a request always proceed without waiting for buffers that other
// connections hold, perhaps forever: it streams through them instead.
// Each has one owner at a time, so none needs a lock:
//
//   - reader: the reading goroutine's, for WRITE payloads it streams
//     into the backend and for splices it falls back from (splice.go);
//   - writer: the reply writer's, for READs it streams whose plan found
//     no buffer on the reader (replytail.go);
//   - reads: the READs on goroutines of their own, one at a time: a READ
//     whose plan found no buffer takes it (takeRead) and its finish gives
//     it back, so a slow backend under one READ holds none of the
//     connection's other replies.
//
// They are allocated on first use; a connection that never meets a full
// budget has none. MaxConns bounds how many there can be.
type spareBuffers struct {
	reader, writer []byte
	reads          chan []byte // capacity 1; holds nil until first used
}

// spareSize is the size of each spare: small enough that every
// connection may have three, large enough to stream at a useful rate.
const spareSize = 64 << 10

func newSpareBuffers() *spareBuffers {
	s := &spareBuffers{reads: make(chan []byte, 1)}
	s.reads <- nil
	return s
}

// forReader returns the reader's spare.
func (s *spareBuffers) forReader() []byte { return spare(&s.reader) }

// forWriter returns the writer's spare.
func (s *spareBuffers) forWriter() []byte { return spare(&s.writer) }

func spare(p *[]byte) []byte {
	if *p == nil {
		*p = make([]byte, spareSize)
	}
	return *p
}

// takeRead waits for the READ spare. It gives up its turn at the backend
// (Server.MaxBackendCalls) while it waits, so that a connection stalled
// on a client that reads nothing holds no turns.
func (s *spareBuffers) takeRead(ctx context.Context, srv *Server) ([]byte, error) {
	var b []byte
	select {
	case b = <-s.reads:
	default:
		srv.endCall()
		select {
		case b = <-s.reads:
		case <-ctx.Done():
			srv.beginCall()
			return nil, ctx.Err()
		}
		srv.beginCall()
	}
	if b == nil {
		b = make([]byte, spareSize)
	}
	return b, nil
}

// putRead gives the READ spare back; b may have been cut short.
func (s *spareBuffers) putRead(b []byte) { s.reads <- b[:cap(b)] }
