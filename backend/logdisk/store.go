package logdisk

import (
	"context"
	"errors"
	"io"
)

// Store is the object store an image lives in: the few operations of S3
// that the engine needs. Keys are full object names; an image's objects
// share its prefix. Implementations must be safe for concurrent use.
type Store interface {
	// PutIfAbsent stores size bytes read from body under key, unless an
	// object named key exists, in which case it stores nothing and returns
	// an error matching ErrExists (S3: If-None-Match "*", 412). body may be
	// read more than once (a retried request seeks it back to 0).
	PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error
	// ReadAt reads len(p) bytes of the object key from offset off (an S3
	// ranged GET). Fewer bytes mean the object ended: n < len(p) and
	// io.EOF. A missing object is ErrNotFound.
	ReadAt(ctx context.Context, key string, p []byte, off int64) (int, error)
	// Delete removes the objects; missing ones are not an error.
	Delete(ctx context.Context, keys []string) error
	// List calls fn for every object whose key starts with prefix and sorts
	// after startAfter, in key order, until fn returns false.
	List(ctx context.Context, prefix, startAfter string, fn func(ObjectInfo) bool) error
}

// VectorReader is implemented by stores that can read one range of an
// object into several buffers, in order, with one request and no copy
// (the read cache fills its blocks so). ReadAtv follows ReadAt otherwise.
type VectorReader interface {
	ReadAtv(ctx context.Context, key string, bufs [][]byte, off int64) (int, error)
}

// WholeReader is implemented by stores that can read a whole object into
// several buffers, in order, with one request and no copy (S3: a GET
// without a Range). A store may serve a whole object more cheaply than a
// range of it; sequential read-ahead fetches whole segments so. An object
// whose length is not the buffers' total is an error.
type WholeReader interface {
	ReadWholev(ctx context.Context, key string, bufs [][]byte) (int, error)
}

// ObjectInfo is one object of a List.
type ObjectInfo struct {
	Key  string
	Size int64
}

// Errors a Store reports; wrap them with %w.
var (
	// ErrExists is a PutIfAbsent of a key that exists.
	ErrExists = errors.New("object exists")
	// ErrNotFound is a read of a key that does not exist.
	ErrNotFound = errors.New("object not found")
)

// Permanent marks store errors that retrying cannot cure (wrong
// credentials, a missing bucket, access denied): the engine reports them
// at once instead of retrying. A Store wraps such errors with it.
type Permanent struct{ Err error }

func (e *Permanent) Error() string { return e.Err.Error() }
func (e *Permanent) Unwrap() error { return e.Err }

// isPermanent reports whether err is not worth retrying.
func isPermanent(err error) bool {
	var p *Permanent
	return errors.As(err, &p) || errors.Is(err, ErrExists) || errors.Is(err, ErrNotFound) || errors.Is(err, errCorrupt) ||
		errors.Is(err, context.Canceled)
}
