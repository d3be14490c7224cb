package main

import (
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

// The garbage collector's settings are the process's, and other tests
// here run serve, which holds it back: holdGC's tests run in a child
// process of their own (inChild).
const holdGCChildEnv = "NBDD_TEST_HOLDGC_CHILD"

// inChild runs the calling test alone in a new process of the test
// binary, with env added, and reports whether this is that process.
func inChild(t *testing.T, env ...string) bool {
	t.Helper()
	if os.Getenv(holdGCChildEnv) != "" {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), holdGCChildEnv+"=1", "GOGC=", "GOMEMLIMIT="), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in a child process: %v\n%s", t.Name(), err, out)
	}
	return false
}

func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

var sink [][]byte

// allocate makes n MiB of garbage, 64 KiB at a time.
func allocate(n int) {
	for i := range n * 16 {
		sink = append(sink[:i%16], make([]byte, 64<<10))
	}
	sink = nil
}

// gcPercent reads GOGC's current setting.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// TestHoldGC checks that while holdGC holds the collector back, 16 MiB
// of garbage (four times Go's first heap goal) runs no collection, and
// that release puts GOGC and the memory limit back as they were after its
// window.
func TestHoldGC(t *testing.T) {
	if !inChild(t) {
		return
	}
	runtime.GC()
	percent, limit := gcPercent(), debug.SetMemoryLimit(-1)
	release := holdGC(10 * time.Millisecond)
	if gcPercent() != startupGCPercent {
		t.Fatalf("GOGC %d while held back; want %d", gcPercent(), startupGCPercent)
	}
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

// TestHoldGCLiveGrowth checks that a heap growing with live data while
// the collector is held back (a preallocated memory export: 256 MiB kept)
// is collected a few times, not again and again as it would be above a
// memory limit with the collector off.
func TestHoldGCLiveGrowth(t *testing.T) {
	if !inChild(t) {
		return
	}
	runtime.GC()
	release := holdGC(time.Hour)
	defer release()
	before := gcCycles()
	live := make([][]byte, 0, 256*16)
	for range 256 * 16 {
		live = append(live, make([]byte, 64<<10))
	}
	if n := gcCycles() - before; n > 3 {
		t.Errorf("%d collections while 256 MiB of live data was allocated; want at most 3", n)
	}
	runtime.KeepAlive(live)
}

// TestHoldGCUserSettings checks that GOGC set by the user stands.
func TestHoldGCUserSettings(t *testing.T) {
	if !inChild(t, "GOGC=50") {
		return
	}
	holdGC(0)()
	if p := gcPercent(); p != 50 {
		t.Errorf("GOGC %d with GOGC=50 in the environment", p)
	}
}
