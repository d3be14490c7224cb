// Package e2e drives the built nbdd binary with real NBD clients: libnbd's
// nbdinfo, nbdcopy and nbdsh, qemu-img and qemu-io, fio's nbd engine, nbdkit
// as a reference server, and a raw Go client built on package protocol for
// the malformed requests no real client sends (nbdkit tests/functions.sh is
// the model: requires, start_nbdkit, kill_nbdkit).
//
// Every data-path scenario runs under each buffer strategy, on a
// unix socket, and the main round trips also on TCP 127.0.0.1. Missing tools
// skip a test outside CI and fail it in CI, where .ci/run installs them.
//
// Scenarios:
//
//	TestNBDInfo                    nbdinfo --list and --json: exports, sizes, flags, block sizes
//	TestQEMUImgConvert             256 MiB random image in and out with qemu-img, cmp, qemu-img compare
//	TestQEMUIOPatterns             qemu-io pattern writes and reads at unaligned offsets
//	TestNBDCopyRoundTrip           nbdcopy in and out at default parallelism, throughput logged
//	TestNBDShAIO                   64 concurrent aio reads and writes, flush, trim, zero (testdata/aio.py)
//	TestNBDShMultiConn             four connections see each other's flushed writes
//	TestMaxSizeRequestsUnderBudget eight 32 MiB requests in flight under an 8 MiB memory budget
//	TestFIOVerify                  fio nbd engine, verify=crc32c, iodepth 32
//	TestDifferentialNBDKit         same operations against nbdkit memory: same bytes, same flags
//	TestBadRequests(NBDSh)         out of range, oversized, unknown command or flag, bad magic, read-only
//	TestDurabilityKill9            flushed and FUA writes survive kill -9 (file and load exports)
//	TestGracefulShutdown           SIGTERM with fio and a Go client in flight: exit 0, no acked write lost
//	TestSecondSignal               a second SIGTERM exits at once
//	TestBackendFaults(SimpleReplies), TestFlushFault   injected EIO reaches only the faulty requests
//	TestHandshakeTimeout, TestMaxConnections, TestUnknownExport, TestReadOnlyFlag   limits and access
//	TestCLIUsageErrors, TestCLIVersion, TestServeDefaults, TestSocketInUse
//	TestCloneWritesOverlay         clones: writes in the overlay, the base's SHA-256 unchanged, reads of the base, restart
//	TestCloneKill9AfterFlush       a clone's flushed and FUA writes survive kill -9
//	TestCloneTrimMasksBase         TRIM and WRITE_ZEROES read as zeroes over the base's data, and are holes
//	TestCloneBlockStatusMatchesQCOW2  qemu-img map of a clone equals that of the qcow2 chain after the same ops
//	TestCloneThrowAway, TestManyClones, TestCloneCLIErrors, TestImageCommandsLocal
package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdd/nbdd/internal/harness"
)

// nbddBin is the nbdd binary built once by TestMain, without -race: the
// server under test runs at full speed whatever the test binary is.
var nbddBin string

// sharedDir holds the binary and the images shared by tests (see
// randomImage); TestMain removes it.
var sharedDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nbdd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	sharedDir = dir
	nbddBin = filepath.Join(dir, "nbdd")
	if err := harness.BuildNBDD(nbddBin, false); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building nbdd:", err)
		return 1
	}
	return m.Run()
}

// strategies are the buffer policies of nbdd serve --strategy; every
// data-path test runs under each, as net/http runs its tests per mode.
var strategies = []string{"grow", "resize", "pool", "stream"}

// forEachStrategy runs f as one subtest per buffer strategy.
func forEachStrategy(t *testing.T, f func(t *testing.T, strategy string)) {
	t.Helper()
	for _, s := range strategies {
		t.Run(s, func(t *testing.T) { f(t, s) })
	}
}

// forEachStrategyAndExport runs f once per buffer strategy and kind of
// export, with the nbdd arguments for an export named "disk" of size
// bytes. Every kind matters: a memory export sends READs from its own
// pages and takes WRITE payloads straight into them, a file in memory
// (/dev/shm) sends large READs with sendfile(2), and only a file on disk,
// whose payloads all pass through buffers, puts the strategy to work on
// every request.
func forEachStrategyAndExport(t *testing.T, size int64, f func(t *testing.T, strategy string, export []string)) {
	t.Helper()
	forEachStrategy(t, func(t *testing.T, strategy string) {
		t.Run("memory", func(t *testing.T) {
			f(t, strategy, []string{"--memory", fmt.Sprintf("disk=%d", size)})
		})
		t.Run("file", func(t *testing.T) {
			f(t, strategy, []string{"--export", "disk=" + sparseFile(t, t.TempDir(), size)})
		})
		// A file in memory: its large READs go out with sendfile(2).
		t.Run("shm-file", func(t *testing.T) {
			f(t, strategy, []string{"--export", "disk=" + sparseFile(t, shmDir(t), size)})
		})
	})
}

// shmDir returns a temporary directory on tmpfs (/dev/shm), removed after
// the test.
func shmDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "nbdd-e2e-*")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no /dev/shm: %v", err)
		}
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// requireTool skips the test when name is not on PATH, unless CI is set
// (harness.RequireTool).
func requireTool(t *testing.T, name string) {
	t.Helper()
	harness.RequireTool(t, name)
}
