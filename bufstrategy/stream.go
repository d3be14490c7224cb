package bufstrategy

// Stream is the streaming policy ("stream"): every buffer is one fixed
// chunk of StreamChunk bytes (256 KiB by default), shared by all
// connections and recycled through one bounded free list. Get returns
// min(n, chunk) bytes and ChunkLimit reports the chunk, so the server
// moves a large request through the chunk in steps: a WRITE payload goes
// conn -> chunk -> WriteAt(off+k), a READ goes ReadAt(off+k) -> chunk ->
// conn.
//
// Trade-off: memory per request is bounded by one chunk whatever its
// length, so a 32 MiB request costs 256 KiB, and there are no size
// classes to fragment. The cost is one backend call and one socket write
// per chunk, and, for READ under simple replies, the reply header must be
// sent before the whole payload has been read from the backend: an error
// on a later chunk cannot be reported in the reply and forces a hard
// disconnect (proto.md, "Simple reply message"). The server should count
// those disconnects. Structured replies remove the problem.
//
// Create it with New(NameStream, cfg).
type Stream struct {
	core
	chunks stack
}

// newStream builds a Stream whose chunk is StreamChunk capped by
// MaxRequest and the budget.
func newStream(s settings, b *Budget) *Stream {
	st := &Stream{}
	st.init(NameStream, s, b, s.streamChunk)
	st.chunks.max = max(1, int(s.retainPerClass/int64(st.limit)))
	st.rec = newReclaimer(&st.core, st.chunks.sweep)
	return st
}

// NewConn implements Factory.
func (s *Stream) NewConn() Strategy {
	return &sharedConn{acct: acct{f: &s.core}, set: s}
}

// ChunkLimit implements Factory: the chunk size, which every Get respects.
func (s *Stream) ChunkLimit() int { return s.limit }

// Close stops the idle reclaimer and frees the idle chunks. Chunks
// returned afterwards are dropped. It implements Factory.Close and always
// returns nil.
func (s *Stream) Close() error {
	s.close(s.chunks.drain)
	return nil
}

// stackFor implements stackSet: every request uses one chunk.
func (s *Stream) stackFor(int) (*stack, int) { return &s.chunks, s.limit }

// stackOf implements stackSet: only chunk-sized buffers are the stream's.
func (s *Stream) stackOf(capacity int) *stack {
	if capacity != s.limit {
		return nil
	}
	return &s.chunks
}
