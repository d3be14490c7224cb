package s3store

import (
	"bytes"
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReadAtv is ranged GETs of 256 KiB (a read miss's fetch unit)
// into 16 KiB buffers, as the read cache makes them, 32 at once (as many
// as nbdd's GET workers), against versitygw on loopback. The server runs
// in its own process, so allocs/op are the client's alone, and so is
// cpu-µs/op: this process's CPU (user and system) per GET. ns/op includes
// the server's time.
func BenchmarkReadAtv(b *testing.B) {
	st, _, _ := newStore(b)
	ctx := context.Background()
	obj := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB, a segment
	if err := st.PutIfAbsent(ctx, "seg", bytes.NewReader(obj), int64(len(obj))); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(256 << 10)
	b.ReportAllocs()
	b.SetParallelism(16)
	var next atomic.Int64
	before := processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		bufs := make([][]byte, 16)
		for i := range bufs {
			bufs[i] = make([]byte, 16<<10)
		}
		for pb.Next() {
			off := next.Add(1) % 64 * (256 << 10)
			if n, err := st.ReadAtv(ctx, "seg", bufs, off); err != nil || n != 256<<10 {
				b.Errorf("ReadAtv at %d: %d, %v", off, n, err)
				return
			}
		}
	})
	b.ReportMetric(float64((processCPU(b)-before).Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU returns the user and system CPU time of this process.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
