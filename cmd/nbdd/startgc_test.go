package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

var sink [][]byte

func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// allocate makes n MiB of garbage, 64 KiB at a time.
func allocate(n int) {
	for i := range n * 16 {
		sink = append(sink[:i%16], make([]byte, 64<<10))
	}
	sink = nil
}

// TestHoldGC checks that while holdGC holds the collector back, 16 MiB
// of garbage (four times Go's first heap goal) runs no collection, and
// that release puts GOGC and the memory limit back after its window.
func TestHoldGC(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	runtime.GC()
	percent, limit := gcPercent(), debug.SetMemoryLimit(-1)
	release := holdGC(10 * time.Millisecond)
	before := gcCycles()
	allocate(16)
	if n := gcCycles() - before; n != 0 {
		t.Errorf("%d collections while held back; want none", n)
	}
	release()
	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) != limit || gcPercent() != percent {
		if time.Now().After(deadline) {
			t.Fatalf("after release: memory limit %d, GOGC %d; want %d and %d", debug.SetMemoryLimit(-1), gcPercent(), limit, percent)
		}
		time.Sleep(5 * time.Millisecond)
	}
	before = gcCycles()
	allocate(16)
	if gcCycles() == before {
		t.Error("no collection after release")
	}
}

// TestHoldGCUserSettings checks that GOGC set by the user stands.
func TestHoldGCUserSettings(t *testing.T) {
	t.Setenv("GOGC", "100")
	holdGC(0)()
	if p := gcPercent(); p != 100 {
		t.Errorf("GOGC %d with GOGC=100 in the environment", p)
	}
}

// gcPercent reads GOGC's current setting.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}
