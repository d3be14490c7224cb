package ksm

import (
	"context"
	"encoding/binary"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// realLock serialises tests that touch the host's KSM (it is host-wide).
const realLock = "/run/nbdd-ksm-test.lock"

// requireRealKSM skips unless NBDD_KSM_REAL=1, root and a writable
// /sys/kernel/mm/ksm; it takes the host-wide test lock until the test ends.
func requireRealKSM(t *testing.T) {
	t.Helper()
	if os.Getenv("NBDD_KSM_REAL") != "1" {
		t.Skip("set NBDD_KSM_REAL=1 to run against the host's KSM (root, /sys/kernel/mm/ksm)")
	}
	if os.Geteuid() != 0 || unix.Access(filepath.Join(DefaultRoot, KnobRun), unix.W_OK) != nil {
		t.Fatal("NBDD_KSM_REAL=1 needs root and a writable " + DefaultRoot)
	}
	f, err := os.OpenFile(realLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// mergeableRegion maps size bytes of private anonymous memory, fills page i
// with a pattern derived from i (so that pages merge only across regions) and
// marks it MADV_MERGEABLE.
func mergeableRegion(t *testing.T, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	page := os.Getpagesize()
	for off := 0; off < size; off += 8 {
		binary.LittleEndian.PutUint64(b[off:], uint64(off/page)*0x9e3779b97f4a7c15+uint64(off%page))
	}
	if err := unix.Madvise(b, unix.MADV_MERGEABLE); err != nil {
		t.Fatalf("MADV_MERGEABLE: %v", err)
	}
	return b
}

func base(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func TestRealKSMSmoke(t *testing.T) {
	requireRealKSM(t)
	store := Dir{}
	before, err := ReadStatus(store)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	a, b := mergeableRegion(t, size), mergeableRegion(t, size)
	th, stop := startReal(t, PolicyRate, a, b)

	start := time.Now()
	merged := waitMerged(t, base(b), size, 60*time.Second)
	t.Logf("%d of %d bytes of the second copy merged after %v", merged, size, time.Since(start).Round(time.Millisecond))
	if merged < size*9/10 {
		t.Errorf("only %d of %d bytes merged within 60 s", merged, size)
	}
	st := th.Status()
	t.Logf("state %v, knobs %v, counters %+v, exports %+v", st.State, st.Knobs, st.Counters, st.Exports)
	if st.Process == nil || st.Process.MergingPages == 0 {
		t.Logf("ksm_stat shows no merging pages yet (it lags behind smaps): %+v", st.Process)
	}

	// Merged pages still read the same, and a write to one copy stays there (COW).
	if string(a[:4096]) != string(b[:4096]) {
		t.Error("merged pages differ")
	}
	a[100] ^= 0xff
	if a[100] == b[100] {
		t.Error("write to one copy shows in the other")
	}

	if err := stop(); err != nil {
		t.Fatalf("restore: %v", err)
	}
	after, err := ReadStatus(store)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before.Knobs, after.Knobs) {
		t.Errorf("knobs after stop:\n%v\nwant the snapshot:\n%v", after.Knobs, before.Knobs)
	}
}

// startReal runs a Throttler on the host's KSM with regions registered as
// exports "0", "1", ... stop cancels Run and returns its error; it may be
// called again, and runs at cleanup so that a failed test still restores.
func startReal(t *testing.T, p Policy, regions ...[]byte) (th *Throttler, stop func() error) {
	t.Helper()
	th, err := New(Config{Store: Dir{}, Policy: p, StateFile: filepath.Join(t.TempDir(), "ksm.snapshot"),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- th.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() })
	for i, r := range regions {
		name := strconv.Itoa(i)
		th.RegisterMapping(name, base(r), uintptr(len(r)))
		th.ExportOpened(name, int64(len(r)))
	}
	return th, stop
}

// waitMerged polls smaps until the mapping has merged 90% of size or timeout.
func waitMerged(t *testing.T, addr uintptr, size int, timeout time.Duration) int64 {
	t.Helper()
	var merged int64
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var err error
		if merged, err = MappingKSMBytes(DefaultSmaps, addr, uintptr(size)); err != nil {
			t.Fatal(err)
		}
		if merged >= int64(size)*9/10 {
			break
		}
	}
	return merged
}
