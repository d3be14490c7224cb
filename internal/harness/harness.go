// Package harness is what nbdd's end-to-end, kernel and soak tests share
// to run servers for real, in the manner of nbdkit's tests/functions.sh
// (requires, start_nbdkit, kill_nbdkit): the CI rule for missing tools,
// building the nbdd binary, starting and stopping server processes,
// waiting for them to serve, and a buffer their output can be watched in.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/nbdclient"
)

// CI reports whether the tests run in CI (CI set to anything), where
// .ci/run has installed every tool and a missing one is a failure.
func CI() bool { return os.Getenv("CI") != "" }

// RequireTool skips the test when name is not on PATH, unless CI is set:
// .ci/run installs every peer, so a skip there would hide a broken install.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if CI() {
			t.Fatalf("%s not installed: .ci/run must install it", name)
		}
		t.Skipf("%s not installed", name)
	}
}

// ModuleRoot returns the directory of nbdd's go.mod, as the go command
// finds it from the working directory (a test's package directory).
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside nbdd's module")
	}
	return filepath.Dir(mod), nil
}

// BuildNBDD builds ./cmd/nbdd into out, without the race detector, so the
// server under test runs at full speed whatever the test binary is.
// static builds without cgo, for a binary that also runs in the kernel
// tests' guest.
func BuildNBDD(out string, static bool) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// -buildvcs=auto overrides a GOFLAGS=-buildvcs=false of the
	// environment, so that nbdd version names the commit.
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=auto", "-o", out, "./cmd/nbdd")
	cmd.Dir = root
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/nbdd: %v: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// ShortTempDir is a directory for unix sockets: $TMPDIR unless it is too
// long for a socket path (107 bytes with our suffixes).
func ShortTempDir() string {
	if d := os.TempDir(); len(d) < 64 {
		return d
	}
	return "/tmp"
}

// CleanEnv is the test's environment without NBDD_* variables, so that
// only a server's arguments configure it.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NBDD_") {
			env = append(env, kv)
		}
	}
	return env
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitDial polls until network/addr accepts a connection, never with a
// fixed sleep longer than 100 ms.
func WaitDial(t testing.TB, network, addr string, timeout time.Duration) {
	t.Helper()
	if err := poll(timeout, func() error {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("dial %s %s: %v after %v", network, addr, err, timeout)
	}
}

// ProbeNBD connects to addr, waits for a newstyle greeting and leaves
// with NBD_OPT_ABORT, so that a readiness check shows up in the server's
// log as an aborted handshake, not as a failed connection.
func ProbeNBD(network, addr string) error {
	nc, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(2 * time.Second))
	c := nbdclient.New(nc)
	if _, err := c.Start(); err != nil {
		return err
	}
	_ = c.Abort() // the server may acknowledge or just close: either is fine
	return nil
}

// poll runs try until it succeeds or timeout passes, backing off from
// 1 ms to 100 ms, and returns the last error.
func poll(timeout time.Duration, try func() error) error {
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
	}
}

// SyncBuffer is a bytes.Buffer safe for a process's output goroutine and
// the test reading it at once.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls until the buffer contains s, and reports whether it did
// within timeout.
func (b *SyncBuffer) WaitFor(s string, timeout time.Duration) bool {
	return poll(timeout, func() error {
		if !strings.Contains(b.String(), s) {
			return errors.New("not yet")
		}
		return nil
	}) == nil
}

var _ io.Writer = (*SyncBuffer)(nil)

// Process is a server (or any command) running for a test.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // Cmd.Wait's result; read after done
}

// Start starts cmd and a goroutine that waits for it.
func Start(cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns Cmd.Wait's result.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// ExitedWithin reports whether the process exits within d.
func (p *Process) ExitedWithin(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM and waits, killing the process after grace. It
// reports whether the process exited by itself with status 0, and how it
// ended otherwise.
func (p *Process) Stop(grace time.Duration) (graceful bool, how string, took time.Duration) {
	t0 := time.Now()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	if !p.ExitedWithin(grace) {
		_ = p.Cmd.Process.Kill()
		p.Wait()
		return false, fmt.Sprintf("still running %v after SIGTERM: killed", grace), time.Since(t0)
	}
	took = time.Since(t0)
	if p.err == nil {
		return true, "exit status 0", took
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return false, fmt.Sprintf("died of %v (no SIGTERM handler: nothing flushed)", ws.Signal()), took
		}
	}
	return false, p.err.Error(), took
}

// WaitServing polls probe until it succeeds, the process exits, or
// timeout passes.
func (p *Process) WaitServing(timeout time.Duration, probe func() error) error {
	exited := errors.New("exited")
	err := poll(timeout, func() error {
		if !p.Running() {
			return exited
		}
		return probe()
	})
	if errors.Is(err, exited) {
		return fmt.Errorf("exited before serving: %v", p.err)
	}
	return err
}
