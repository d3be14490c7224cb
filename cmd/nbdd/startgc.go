package main

import (
	"os"
	"runtime/debug"
	"time"
)

const (
	// startupGCPercent is GOGC while the exports open and the first
	// clients arrive. The runtime's first heap goal is 4 MiB at GOGC=100
	// and scales with GOGC: 1600 puts it at 64 MiB.
	startupGCPercent = 1600
	// startupWindow is how long startupGCPercent stays once the exports
	// are open: the first clients' handshakes and first requests.
	startupWindow = time.Second
)

// holdGC holds the garbage collector back while the exports open and the
// first clients arrive. Opening an S3 image decodes its checkpoint and
// builds its map, a few MB allocated while the heap is small; with Go's
// first heap goal of 4 MB that is two collections on the way to the
// first READ, each stopping the world, which on busy cores waits for
// threads the kernel has descheduled. A high GOGC rather than GOGC=off
// with a memory limit: a heap that grows past such a limit with live
// data (a preallocated memory export, a first fill) would be collected
// again and again while it stays above it, where a high GOGC collects
// once per 17-fold growth. release puts GOGC back after window. With
// GOGC or GOMEMLIMIT set, the user's settings stand and holdGC changes
// nothing.
func holdGC(window time.Duration) (release func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	percent := debug.SetGCPercent(startupGCPercent)
	return func() {
		time.AfterFunc(window, func() { debug.SetGCPercent(percent) })
	}
}
