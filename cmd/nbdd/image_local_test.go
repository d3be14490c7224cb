package main

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriteNonZero: runs of 4 KiB blocks with data are written, blocks of
// zeroes are left as holes, and a short last block counts as a block.
func TestWriteNonZero(t *testing.T) {
	p := make([]byte, 5*4096+100)
	copy(p[10:], "a")                                 // block 0
	copy(p[2*4096+4095:], "b")                        // block 2
	copy(p[3*4096:], bytes.Repeat([]byte("c"), 4096)) // block 3
	copy(p[5*4096+99:], "d")                          // the short last block
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(p)) + 8192); err != nil {
		t.Fatal(err)
	}
	if err := writeNonZero(f, p, 8192); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := f.ReadAt(got, 8192); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("what was written differs from the data")
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	// Blocks 0, 2, 3 and the short last one hold data; blocks 1 and 4,
	// and the 8 KiB before, are holes (on file systems of 4 KiB blocks).
	if st.Blksize == 4096 && st.Blocks*512 != 4*4096 {
		t.Errorf("%d bytes allocated; want 16384, the 4 blocks with data", st.Blocks*512)
	}
}
