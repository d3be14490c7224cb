package logdisk

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// Op names a Store operation, for MemStore's hook.
type Op string

// The operations a MemStore hook sees.
const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpDelete Op = "delete"
	OpList   Op = "list"
)

// MemStore is a Store in memory, for tests: it keeps objects in a map and
// lets a test inject faults or hold requests through Hook.
type MemStore struct {
	// Hook, when set, runs before every operation (for a delete, once per
	// key) without MemStore's lock held. A non-nil error fails the
	// operation and nothing changes. A hook may block to order requests
	// deterministically.
	Hook func(op Op, key string) error

	mu      sync.Mutex
	objects map[string][]byte
	puts    int
	gets    int
	wholes  int // the GETs of gets that were ReadWholev's
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{objects: map[string][]byte{}} }

func (s *MemStore) hook(op Op, key string) error {
	if s.Hook == nil {
		return nil
	}
	return s.Hook(op, key)
}

// PutIfAbsent implements Store.
func (s *MemStore) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := s.hook(OpPut, key); err != nil {
		return err
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return err
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(body, data); err != nil {
		return fmt.Errorf("read body of %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.puts++
	if _, ok := s.objects[key]; ok {
		return fmt.Errorf("put %s: %w", key, ErrExists)
	}
	s.objects[key] = data
	return nil
}

// ReadAt implements Store.
func (s *MemStore) ReadAt(ctx context.Context, key string, p []byte, off int64) (int, error) {
	if err := s.hook(OpGet, key); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	data, ok := s.objects[key]
	if !ok {
		return 0, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if off >= int64(len(data)) {
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Delete implements Store.
func (s *MemStore) Delete(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := s.hook(OpDelete, k); err != nil {
			return err
		}
		s.mu.Lock()
		delete(s.objects, k)
		s.mu.Unlock()
	}
	return nil
}

// List implements Store.
func (s *MemStore) List(ctx context.Context, prefix, startAfter string, fn func(ObjectInfo) bool) error {
	if err := s.hook(OpList, prefix); err != nil {
		return err
	}
	s.mu.Lock()
	var infos []ObjectInfo
	for k, v := range s.objects {
		if strings.HasPrefix(k, prefix) && k > startAfter {
			infos = append(infos, ObjectInfo{Key: k, Size: int64(len(v))})
		}
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if !fn(info) {
			break
		}
	}
	return nil
}

// Object returns a copy of the object key, for tests.
func (s *MemStore) Object(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.objects[key]
	return append([]byte(nil), v...), ok
}

// Bytes returns the number of objects and their total size under prefix.
func (s *MemStore) Bytes(prefix string) (objects int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.objects {
		if strings.HasPrefix(k, prefix) {
			objects++
			bytes += int64(len(v))
		}
	}
	return objects, bytes
}

// Requests returns the number of PUTs and GETs served so far.
func (s *MemStore) Requests() (puts, gets int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts, s.gets
}

// WholeGets returns how many of the GETs served read a whole object
// (ReadWholev).
func (s *MemStore) WholeGets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wholes
}

// ReadWholev implements WholeReader.
func (s *MemStore) ReadWholev(ctx context.Context, key string, bufs [][]byte) (int, error) {
	if err := s.hook(OpGet, key); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	s.wholes++
	data, ok := s.objects[key]
	if !ok {
		return 0, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total != len(data) {
		return 0, &Permanent{Err: fmt.Errorf("get %s: the object is %d bytes, want %d", key, len(data), total)}
	}
	n := 0
	for _, b := range bufs {
		n += copy(b, data[n:])
	}
	return n, nil
}

// ReadAtv implements VectorReader.
func (s *MemStore) ReadAtv(ctx context.Context, key string, bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	p := make([]byte, total)
	n, err := s.ReadAt(ctx, key, p, off)
	rest := p[:n]
	for _, b := range bufs {
		rest = rest[copy(b, rest):]
	}
	return n, err
}
