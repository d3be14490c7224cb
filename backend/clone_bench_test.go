//go:build linux

package backend

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkCloneFirstWrite measures what block size costs a clone: 4 KiB
// writes at random 4 KiB-aligned offsets, each the first to its place, to
// a fresh clone of a 1 GiB base with random data, base and overlay in
// /dev/shm. With 4 KiB blocks a write covers its block and copies nothing
// up; with 64 KiB blocks it first copies up the 60 KiB around it. Then a
// FLUSH writes the map pages the writes changed.
//
//	go test -run '^$' -bench CloneFirstWrite -benchtime 20000x ./backend
func BenchmarkCloneFirstWrite(b *testing.B) {
	dir, err := os.MkdirTemp("/dev/shm", "clonebench")
	if err != nil {
		b.Skip("no /dev/shm")
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	const size = 1 << 30
	basePath := filepath.Join(dir, "base.raw")
	f, err := os.Create(basePath)
	if err != nil {
		b.Fatal(err)
	}
	chunk := randBytes(4<<20, 1)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	base, err := OpenCloneBase(basePath, false, false)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { base.Close() })
	p := randBytes(4096, 2)
	for _, bs := range []int{4 << 10, 64 << 10} {
		b.Run(formatBlock(bs), func(b *testing.B) {
			ovl := filepath.Join(dir, formatBlock(bs)+".ovl")
			if err := CreateOverlay(ovl, base, bs); err != nil {
				b.Fatal(err)
			}
			defer os.Remove(ovl)
			c, err := OpenClone(ovl, base, false)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			perm := rand.New(rand.NewPCG(3, 4)).Perm(size / 4096)
			b.SetBytes(4096)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := c.WriteAt(p, int64(perm[i%len(perm)])*4096); err != nil {
					b.Fatal(err)
				}
				i++
			}
			if err := c.Sync(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(c.copyUps.Load())/float64(i), "copyups/op")
		})
	}
}
