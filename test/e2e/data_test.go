package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// imageSize is the size of the random image of the round-trip tests
// (a 256 MiB random image).
const imageSize = 256 << 20

// randomImage returns the path of a 256 MiB file of pseudo-random bytes,
// written once per test binary and shared read-only by the tests.
func randomImage(t *testing.T) string {
	t.Helper()
	path, err := sharedImage()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

var sharedImage = sync.OnceValues(func() (string, error) {
	path := filepath.Join(sharedDir, "random.img")
	return path, writeRandomFile(path, imageSize, 1)
})

// writeRandomFile writes size pseudo-random bytes, determined by seed, to
// path.
func writeRandomFile(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	if _, err := io.CopyN(w, src, size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sparseFile creates an empty file of size bytes in dir (a fresh file
// export reads as zeroes).
func sparseFile(t *testing.T, dir string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireSameFiles fails the test unless the files at a and b hold the
// same bytes, naming the first offset where they differ.
func requireSameFiles(t *testing.T, a, b string) {
	t.Helper()
	if err := compareFiles(a, b); err != nil {
		t.Fatal(err)
	}
}

func compareFiles(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if i := firstDiff(ba[:na], bb[:nb]); i >= 0 {
			return fmt.Errorf("%s and %s differ at byte %d (got %d bytes vs %d in this block)", a, b, off+int64(i), na, nb)
		}
		off += int64(na)
		if erra != nil || errb != nil {
			if (erra == io.EOF || erra == io.ErrUnexpectedEOF) && (errb == io.EOF || errb == io.ErrUnexpectedEOF) {
				return nil
			}
			return fmt.Errorf("comparing %s and %s at byte %d: %v, %v", a, b, off, erra, errb)
		}
	}
}

// firstDiff returns the first index where a and b differ, -1 if equal.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
