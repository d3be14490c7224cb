package server

import (
	"sync"

	"github.com/nbdd/nbdd/backend"
)

// serialize makes every call of exp's backend take mu, so that a backend
// that is not safe for concurrent use (Export.SerialBackend) is called
// one request at a time, as go-nbd called it. The optional interfaces the
// backend has are kept, each behind mu; the ones that only make requests
// faster, and that call the backend from elsewhere (lent memory,
// sendfile, splice, inline reads), are dropped.
func (e *openExport) serialize(mu *sync.Mutex) {
	wrapped := *e.Export
	wrapped.Backend = serialBackend{mu: mu, b: e.Backend}
	e.Export = &wrapped
	if e.trimmer != nil {
		e.trimmer = serialTrimmer{mu, e.trimmer}
	}
	if e.zeroer != nil {
		e.zeroer = serialZeroer{mu, e.zeroer}
	}
	if e.cacher != nil {
		e.cacher = serialCacher{mu, e.cacher}
	}
	if e.fua != nil {
		e.fua = serialFUA{mu, e.fua}
	}
	if e.extenter != nil {
		e.extenter = serialExtenter{mu, e.extenter}
	}
	e.nonBlocking, e.syncWaits = false, false
	e.viewer, e.writeViewer, e.lender, e.file, e.pipeWriter, e.cachedReader, e.dataKnower = nil, nil, nil, nil, nil, nil, nil
}

// serialMutex is the lock that serializes the calls of static export e's
// backend across connections. An export a Source opens is a new Export
// each time, so its lock is its connection's own.
func (s *Server) serialMutex(e *Export) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serial == nil {
		s.serial = make(map[*Export]*sync.Mutex)
	}
	mu := s.serial[e]
	if mu == nil {
		mu = new(sync.Mutex)
		s.serial[e] = mu
	}
	return mu
}

type serialBackend struct {
	mu *sync.Mutex
	b  backend.Backend
}

func (s serialBackend) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.ReadAt(p, off)
}

func (s serialBackend) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.WriteAt(p, off)
}

func (s serialBackend) Size() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Size()
}

func (s serialBackend) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Sync()
}

type serialTrimmer struct {
	mu *sync.Mutex
	t  backend.Trimmer
}

func (s serialTrimmer) Trim(off, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t.Trim(off, n)
}

type serialZeroer struct {
	mu *sync.Mutex
	z  backend.Zeroer
}

func (s serialZeroer) WriteZeroes(off, n int64, noHole, fast bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.z.WriteZeroes(off, n, noHole, fast)
}

type serialCacher struct {
	mu *sync.Mutex
	c  backend.Cacher
}

func (s serialCacher) Cache(off, n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.Cache(off, n)
}

type serialFUA struct {
	mu *sync.Mutex
	f  backend.FUAWriter
}

func (s serialFUA) WriteAtFUA(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f.WriteAtFUA(p, off)
}

type serialExtenter struct {
	mu *sync.Mutex
	e  backend.Extenter
}

func (s serialExtenter) Extents(off, n int64, fn func(backend.Extent) bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.e.Extents(off, n, fn)
}
