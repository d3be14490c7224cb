package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

const (
	// startupHeadroom is how much the memory the Go runtime holds may grow
	// while the collector is held back at start, before it runs anyway.
	startupHeadroom = 64 << 20
	// startupWindow is how long the collector stays held back once the
	// exports are open: the first clients' handshakes and first requests.
	startupWindow = time.Second
)

// holdGC holds the garbage collector back while the exports open and the
// first clients arrive: it runs only if the runtime's memory grows by
// startupHeadroom. Opening an S3 image decodes its checkpoint and builds
// its map, a few MB allocated while the heap is small; with Go's first
// heap goal of 4 MB that is two collections on the way to the first
// READ, each stopping the world, which on busy cores waits for threads
// the kernel has descheduled. release puts the settings back after
// window. With GOGC or GOMEMLIMIT set, the user's settings stand and
// holdGC changes nothing.
func holdGC(window time.Duration) (release func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	held := s[0].Value.Uint64() - s[1].Value.Uint64() // what the memory limit counts
	limit := debug.SetMemoryLimit(int64(held) + startupHeadroom)
	percent := debug.SetGCPercent(-1)
	return func() {
		time.AfterFunc(window, func() {
			debug.SetGCPercent(percent)
			debug.SetMemoryLimit(limit)
		})
	}
}
