package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNBDShAIO runs testdata/aio.py: 64 concurrent aio writes, then 64
// concurrent mixed reads and writes, then flush, trim and zero in flight
// with reads, each checked against a model of the device, and finally the
// whole device read back and compared.
func TestNBDShAIO(t *testing.T) {
	requireTool(t, "nbdsh")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--listen", "tcp://127.0.0.1:0", "--memory", "disk=64M")
		nbdsh(t, s.unixURI(t, "disk"), "aio.py", "SEED=1")
		// The same script on TCP rewrites the same regions with other data
		// over what the first run left; the model starts from zeroes, so
		// use a fresh export for it.
		s2 := startNBDD(t, "--strategy", strategy, "--listen", "tcp://127.0.0.1:0", "--memory", "disk=64M")
		nbdsh(t, s2.tcpURI(t, "disk"), "aio.py", "SEED=2")
	})
}

// TestDifferentialNBDKit runs the same nbdsh operations against nbdkit's
// memory plugin and against nbdd, and requires the same final bytes and
// the same answers from nbdinfo --json where both servers should agree.
func TestDifferentialNBDKit(t *testing.T) {
	requireTool(t, "nbdkit")
	requireTool(t, "nbdsh")
	requireTool(t, "nbdinfo")
	kit := startNBDKit(t, "memory", "64M")
	kitDump := filepath.Join(t.TempDir(), "nbdkit.img")
	nbdsh(t, kit, "aio.py", "SEED=7", "DUMP="+kitDump)
	kitInfo := nbdinfo(t, kit)

	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--memory", "disk=64M")
		uri := s.unixURI(t, "disk")
		dump := filepath.Join(t.TempDir(), "nbdd.img")
		nbdsh(t, uri, "aio.py", "SEED=7", "DUMP="+dump)
		requireSameFiles(t, kitDump, dump)

		info := nbdinfo(t, uri)
		if len(info.Exports) != 1 || len(kitInfo.Exports) != 1 {
			t.Fatalf("nbdinfo: nbdd %d exports, nbdkit %d; want 1 each", len(info.Exports), len(kitInfo.Exports))
		}
		if info.Protocol != kitInfo.Protocol || info.Structured != kitInfo.Structured || info.TLS != kitInfo.TLS {
			t.Errorf("nbdd protocol %q structured %v TLS %v; nbdkit %q %v %v",
				info.Protocol, info.Structured, info.TLS, kitInfo.Protocol, kitInfo.Structured, kitInfo.TLS)
		}
		got, want := comparable(info.Exports[0]), comparable(kitInfo.Exports[0])
		if !reflect.DeepEqual(got, want) {
			t.Errorf("nbdinfo --json fields differ:\nnbdd   %+v\nnbdkit %+v", got, want)
		}
	})
}

// comparable keeps the fields on which a writable memory export of nbdd
// and of nbdkit must agree: the name, the description and the block size
// constraints are each server's own choice.
func comparable(e nbdinfoExport) nbdinfoExport {
	return nbdinfoExport{
		Size: e.Size, Contexts: e.Contexts, IsRotational: e.IsRotational, IsReadOnly: e.IsReadOnly,
		CanCache: e.CanCache, CanDF: e.CanDF, CanFastZero: e.CanFastZero, CanFlush: e.CanFlush,
		CanFUA: e.CanFUA, CanMultiConn: e.CanMultiConn, CanTrim: e.CanTrim, CanZero: e.CanZero,
	}
}

// startNBDKit runs nbdkit in the foreground on a unix socket with the
// given plugin arguments and returns its URI; Cleanup stops it.
func startNBDKit(t *testing.T, plugin ...string) string {
	t.Helper()
	requireTool(t, "nbdkit")
	dir, err := os.MkdirTemp(shortTempDir(), "nbdkit")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	cmd := exec.Command("nbdkit", append([]string{"-U", sock, "-f"}, plugin...)...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
			<-done
			t.Errorf("nbdkit did not exit within %v of SIGTERM", stopTimeout)
		}
		if t.Failed() {
			t.Logf("nbdkit stderr:\n%s", stderr)
		}
		os.RemoveAll(dir)
	})
	waitDial(t, "unix", sock, startTimeout)
	t.Logf("started nbdkit %s", strings.Join(plugin, " "))
	return "nbd+unix:///?socket=" + sock
}

// TestNBDShMultiConn writes from four connections at once and checks that
// each sees the others' flushed writes (testdata/multiconn.py).
func TestNBDShMultiConn(t *testing.T) {
	requireTool(t, "nbdsh")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--memory", "disk=64M")
		nbdsh(t, s.unixURI(t, "disk"), "multiconn.py")
	})
}

// TestMaxSizeRequestsUnderBudget keeps eight 32 MiB requests in flight on
// two connections while the server-wide memory budget is 8 MiB, smaller
// than any one of them: nbdd must wait or stream, never deadlock or fail
// (testdata/big.py): a server-wide memory budget.
func TestMaxSizeRequestsUnderBudget(t *testing.T) {
	requireTool(t, "nbdsh")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--memory-budget", "8MiB", "--memory", "disk=256M")
		nbdsh(t, s.unixURI(t, "disk"), "big.py", "CONNS=2")
	})
}
