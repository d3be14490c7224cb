package bufstrategy

import (
	"context"
	"fmt"
	"testing"
)

// moveRequest gets and puts the buffers for one request of n bytes: one
// Get/Put for most policies, n/chunk of them for stream.
func moveRequest(b *testing.B, s Strategy, n int) {
	ctx := context.Background()
	for left := n; left > 0; {
		buf, err := s.Get(ctx, left)
		if err != nil {
			b.Fatal(err)
		}
		left -= len(buf)
		s.Put(buf)
	}
}

var benchSizes = []struct {
	name string
	n    int
}{{"4KiB", 4 << 10}, {"128KiB", 128 << 10}, {"1MiB", 1 << 20}, {"32MiB", 32 << 20}}

// BenchmarkGetPut measures the steady-state cost of the buffers for one
// request, with a Budget in place as the server will have.
func BenchmarkGetPut(b *testing.B) {
	for _, name := range Names() {
		for _, sz := range benchSizes {
			b.Run(fmt.Sprintf("%s/%s", name, sz.name), func(b *testing.B) {
				s := newConn(b, newFactory(b, name, benchConfig(b)))
				b.SetBytes(int64(sz.n))
				b.ReportAllocs()
				for b.Loop() {
					moveRequest(b, s, sz.n)
				}
			})
		}
	}
}

// BenchmarkAlternating is resize's pathology: a 128 KiB request followed
// by a 4 KiB one (a small READ between large WRITEs). One op is the pair.
func BenchmarkAlternating(b *testing.B) {
	for _, name := range Names() {
		b.Run(name, func(b *testing.B) {
			s := newConn(b, newFactory(b, name, benchConfig(b)))
			b.SetBytes(128<<10 + 4<<10)
			b.ReportAllocs()
			for b.Loop() {
				moveRequest(b, s, 128<<10)
				moveRequest(b, s, 4<<10)
			}
		})
	}
}

// BenchmarkParallel4KiB measures contention: one connection per
// goroutine, all on one factory and one Budget.
func BenchmarkParallel4KiB(b *testing.B) {
	for _, name := range Names() {
		b.Run(name, func(b *testing.B) {
			f := newFactory(b, name, benchConfig(b))
			b.SetBytes(4 << 10)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				s := f.NewConn()
				defer s.Close()
				for pb.Next() {
					moveRequest(b, s, 4<<10)
				}
			})
		})
	}
}

// benchConfig is the default Config plus a 256 MiB Budget.
func benchConfig(b *testing.B) Config {
	budget, err := NewBudget(256 << 20)
	if err != nil {
		b.Fatal(err)
	}
	return Config{Budget: budget}
}
