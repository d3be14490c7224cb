// Package e2e drives the built nbdd binary with real NBD clients: libnbd's
// nbdinfo, nbdcopy and nbdsh, qemu-img and qemu-io, fio's nbd engine, nbdkit
// as a reference server, and a raw Go client built on package protocol for
// the malformed requests no real client sends (nbdkit tests/functions.sh is
// the model: requires, start_nbdkit, kill_nbdkit).
//
// Every data-path scenario runs under each buffer strategy (issue 3), on a
// unix socket, and the main round trips also on TCP 127.0.0.1. Missing tools
// skip a test outside CI and fail it in CI, where .ci/run installs them.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
	build := exec.Command("go", "build", "-o", nbddBin, "github.com/nbdd/nbdd/cmd/nbdd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building nbdd:", err)
		return 1
	}
	return m.Run()
}

// strategies are the buffer policies of nbdd serve --strategy; every
// data-path test runs under each (issue 3, "as net/http runs its tests per
// mode").
var strategies = []string{"grow", "resize", "pool", "stream"}

// forEachStrategy runs f as one subtest per buffer strategy.
func forEachStrategy(t *testing.T, f func(t *testing.T, strategy string)) {
	t.Helper()
	for _, s := range strategies {
		t.Run(s, func(t *testing.T) { f(t, s) })
	}
}

// requireTool skips the test when name is not on PATH, unless CI is set:
// .ci/run installs every peer, so a skip there would hide a broken install.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed: .ci/run must install it", name)
		}
		t.Skipf("%s not installed", name)
	}
}
