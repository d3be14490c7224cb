//go:build linux

package backend

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// fingerprintSpan is how much of each end of a base the fingerprint
// reads: the first and the last MiB, where partition tables, boot
// sectors, filesystem superblocks and GPT's backup header live, so that
// two different images of one size are told apart at the cost of a 2 MiB
// read.
const fingerprintSpan = 1 << 20

// ErrBaseChanged is returned when a clone's base is not the image its
// overlay was made over: another size, other content at either end, or
// another modification time.
var ErrBaseChanged = errors.New("backend: clone base changed")

// ErrOverlayInUse is returned when another process, or another export of
// this one, holds a writable clone's overlay.
var ErrOverlayInUse = errors.New("backend: overlay in use")

// CloneBase is the read-only base image of one or more clones. Opened
// once, it is shared by every Clone over it: for a file, one *os.File,
// whose pages the page cache holds once for all of them; for a base
// loaded into memory, one copy.
type CloneBase struct {
	path        string
	b           Backend
	size        int64
	modTime     int64 // ns since the epoch; 0 for block devices
	fingerprint [32]byte
	mem         baseView // for clones that lend their READs (cloneview.go)
}

// OpenCloneBase opens the image file or block device at path read-only
// as a base for clones. With load set its content is copied into an
// anonymous mapping (LoadMapped), marked mergeable for KSM if mergeable
// is set; otherwise clones read the file itself.
func OpenCloneBase(path string, load, mergeable bool) (*CloneBase, error) {
	f, err := openImage(path, true, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("base %s: %w", path, err)
	}
	var b Backend
	if load {
		m, err := loadMapped(f, mergeable)
		f.Close()
		if err != nil {
			return nil, err
		}
		b = m
	} else {
		fb, err := NewFile(f, true)
		if err != nil {
			f.Close()
			return nil, err
		}
		b = fb
	}
	var mod time.Time
	if fi.Mode().IsRegular() {
		mod = fi.ModTime()
	}
	base, err := NewCloneBase(b, path, mod)
	if err != nil {
		closeBackend(b)
		return nil, err
	}
	return base, nil
}

// NewCloneBase makes b, which nothing must write while clones use it,
// the base of clones. path names it in the overlays made over it, and
// modTime, when not zero, is checked against theirs; the first and last
// MiB are read for the fingerprint. Close closes b if it is an io.Closer.
func NewCloneBase(b Backend, path string, modTime time.Time) (*CloneBase, error) {
	size, err := b.Size()
	if err != nil {
		return nil, fmt.Errorf("base %s: size: %w", path, err)
	}
	base := &CloneBase{path: path, b: b, size: size}
	if !modTime.IsZero() {
		base.modTime = modTime.UnixNano()
	}
	if base.fingerprint, err = fingerprint(b, size); err != nil {
		return nil, fmt.Errorf("base %s: %w", path, err)
	}
	return base, nil
}

// fingerprint hashes the size and the first and last fingerprintSpan
// bytes of b.
func fingerprint(b io.ReaderAt, size int64) ([32]byte, error) {
	h := sha256.New()
	var sz [8]byte
	binary.BigEndian.PutUint64(sz[:], uint64(size))
	h.Write(sz[:])
	n := min(size, fingerprintSpan)
	for _, off := range []int64{0, size - n} {
		if _, err := io.Copy(h, io.NewSectionReader(b, off, n)); err != nil {
			return [32]byte{}, fmt.Errorf("fingerprint: %w", err)
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}

// Path returns the path the base was opened with.
func (b *CloneBase) Path() string { return b.path }

// Backend returns the base's storage: a *File, or a *Mapped for a base
// loaded into memory. Clones never write it, and neither may the caller.
func (b *CloneBase) Backend() Backend { return b.b }

// Size returns the base's size, which is every clone's size.
func (b *CloneBase) Size() int64 { return b.size }

// Close closes the base's storage. The clones over it must be closed
// first.
func (b *CloneBase) Close() error {
	var err error
	if b.mem.unmap != nil {
		err = b.mem.unmap()
		b.mem.unmap = nil
	}
	return errors.Join(err, closeBackend(b.b))
}

func closeBackend(b Backend) error {
	if c, ok := b.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// check returns ErrBaseChanged, saying what differs, unless b is the
// base the overlay with header h was made over.
func (b *CloneBase) check(h *overlayHeader) error {
	switch {
	case b.size != h.size:
		return fmt.Errorf("%w: base %s is %d bytes, the overlay was made over %d bytes", ErrBaseChanged, b.path, b.size, h.size)
	case b.fingerprint != h.fingerprint:
		return fmt.Errorf("%w: base %s is not the image the overlay was made over (its first or last MiB differs)", ErrBaseChanged, b.path)
	case b.modTime != 0 && h.baseModTime != 0 && b.modTime != h.baseModTime:
		return fmt.Errorf("%w: base %s was modified at %s, the overlay was made over the version of %s",
			ErrBaseChanged, b.path, time.Unix(0, b.modTime).UTC().Format(time.RFC3339Nano),
			time.Unix(0, h.baseModTime).UTC().Format(time.RFC3339Nano))
	}
	return nil
}
