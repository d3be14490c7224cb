package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/harness"
)

const (
	startTimeout = 10 * time.Second // from exec to every export announced
	stopTimeout  = 10 * time.Second // from SIGTERM to exit
	toolTimeout  = 2 * time.Minute  // any one client command
)

// nbdd is one running nbdd serve process.
type nbdd struct {
	cmd    *exec.Cmd
	proc   *harness.Process
	sock   string // the unix socket startNBDD adds
	stderr *syncBuffer
	uris   map[string][]string // export name → announced URIs, in order
	exited bool                // stopped or killed by the test already
	termed bool                // SIGTERM sent
}

// startNBDD starts nbdd serve with args plus a unix listener in a short
// temporary directory (unix socket paths hold at most 107 bytes). It waits,
// without fixed sleeps, until every export is announced and the socket
// accepts connections. Cleanup sends SIGTERM and fails the test unless nbdd
// exits 0 within stopTimeout; nbdd's stderr goes to t.Log if the test
// failed. NBDD_* variables of the test's environment are not passed on, so
// that only args configure the server.
func startNBDD(t *testing.T, args ...string) *nbdd {
	t.Helper()
	return startNBDDEnv(t, nil, args...)
}

// startNBDDEnv is startNBDD with env added to nbdd's environment.
func startNBDDEnv(t *testing.T, env []string, args ...string) *nbdd {
	t.Helper()
	dir, err := os.MkdirTemp(shortTempDir(), "nbdd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	s := launchNBDD(t, env, append([]string{"serve", "--listen", "unix://" + sock}, args...), announcements(args))
	s.sock = sock
	waitDial(t, "unix", sock, startTimeout)
	return s
}

// launchNBDD runs nbdd with exactly args, and env added to the
// environment, and waits until it has printed n export URIs. Cleanup stops
// it as startNBDD says.
func launchNBDD(t *testing.T, env, args []string, n int) *nbdd {
	t.Helper()
	s := &nbdd{stderr: &syncBuffer{}, uris: map[string][]string{}}
	s.cmd = exec.Command(nbddBin, args...)
	s.cmd.Env = append(cleanEnv(), env...)
	s.cmd.Stderr = s.stderr
	stdout, w := io.Pipe()
	s.cmd.Stdout = w
	var err error
	if s.proc, err = harness.Start(s.cmd); err != nil {
		t.Fatal(err)
	}
	t.Logf("started nbdd %s (pid %d)", strings.Join(args, " "), s.cmd.Process.Pid)
	go func() { <-s.proc.Done(); w.Close() }()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("nbdd stderr:\n%s", s.stderr.String())
		}
	})
	s.awaitAnnouncements(t, lines, n)
	return s
}

// announceRE matches nbdd's `nbdd: export "NAME" (SIZE) at URI` lines.
var announceRE = regexp.MustCompile(`^nbdd: export "(.*)" \((.*)\) at (\S+)$`)

// awaitAnnouncements reads stdout until n exports × listeners were printed.
func (s *nbdd) awaitAnnouncements(t *testing.T, lines <-chan string, n int) {
	t.Helper()
	defer func() {
		go func() { // keep draining, so that nbdd never blocks on stdout
			for range lines {
			}
		}()
	}()
	deadline := time.After(startTimeout)
	for got := 0; got < n; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("nbdd exited before announcing its exports (%d of %d): %v\nstderr:\n%s", got, n, s.wait(), s.stderr)
			}
			m := announceRE.FindStringSubmatch(l)
			if m == nil {
				t.Logf("nbdd stdout: %s", l)
				continue
			}
			s.uris[m[1]] = append(s.uris[m[1]], m[3])
			got++
		case <-deadline:
			t.Fatalf("nbdd announced %d of %d export URIs in %v\nstderr:\n%s", got, n, startTimeout, s.stderr)
		}
	}
}

// announcements is how many URI lines nbdd prints for args: one per export
// per listener (the unix listener startNBDD adds included).
func announcements(args []string) int {
	exports, listeners := 0, 1
	for _, a := range args {
		switch {
		case a == "--export" || a == "--memory" || a == "--s3" ||
			strings.HasPrefix(a, "--export=") || strings.HasPrefix(a, "--memory=") || strings.HasPrefix(a, "--s3="):
			exports++
		case a == "--listen" || strings.HasPrefix(a, "--listen="):
			listeners++
		}
	}
	return max(exports, 1) * listeners
}

// uri returns the announced URI of export name whose scheme starts with
// scheme ("nbd+unix" or "nbd:"), or with its TLS form ("nbds+unix",
// "nbds:"), which nbdd announces for exports that need TLS.
func (s *nbdd) uri(t *testing.T, name, scheme string) string {
	t.Helper()
	tlsScheme := strings.Replace(scheme, "nbd", "nbds", 1)
	for _, u := range s.uris[name] {
		if strings.HasPrefix(u, scheme) || strings.HasPrefix(u, tlsScheme) {
			return u
		}
	}
	t.Fatalf("no %s URI announced for export %q; got %v", scheme, name, s.uris)
	return ""
}

// unixURI is the URI of export name on startNBDD's unix socket.
func (s *nbdd) unixURI(t *testing.T, name string) string {
	t.Helper()
	return s.uri(t, name, "nbd+unix://")
}

// tcpURI is the URI of export name on a --listen tcp://… listener.
func (s *nbdd) tcpURI(t *testing.T, name string) string {
	t.Helper()
	return s.uri(t, name, "nbd://")
}

// wait waits for the process to exit and returns cmd.Wait's result.
func (s *nbdd) wait() error { return s.proc.Wait() }

// exitedWithin reports whether nbdd exits within d.
func (s *nbdd) exitedWithin(d time.Duration) bool { return s.proc.ExitedWithin(d) }

// terminate sends SIGTERM once: a second one would make nbdd exit at once.
func (s *nbdd) terminate(t *testing.T) {
	t.Helper()
	if s.termed {
		return
	}
	s.termed = true
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("SIGTERM nbdd: %v", err)
	}
}

// stop sends SIGTERM unless terminate did, and fails the test unless nbdd
// exits 0 within stopTimeout. It does nothing the second time, or after
// kill.
func (s *nbdd) stop(t *testing.T) {
	t.Helper()
	if s.exited {
		return
	}
	s.exited = true
	s.terminate(t)
	if !s.exitedWithin(stopTimeout) {
		s.cmd.Process.Kill()
		t.Errorf("nbdd did not exit within %v of SIGTERM; killed it", stopTimeout)
		s.wait()
		return
	}
	if err := s.wait(); err != nil {
		t.Errorf("nbdd after SIGTERM: %v; want exit status 0\nstderr:\n%s", err, s.stderr)
	}
}

// kill sends SIGKILL, as a crash would, and waits for the process to go.
func (s *nbdd) kill(t *testing.T) {
	t.Helper()
	s.exited = true
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL nbdd: %v", err)
	}
	s.wait()
}

// waitDial polls until network/addr accepts a connection and sends an
// NBD greeting.
//
// nbdd listens before its exports open and greets a client once they
// are, so a connection alone does not say the exports are served; the
// greeting does (harness.ProbeNBD).
func waitDial(t *testing.T, network, addr string, timeout time.Duration) {
	t.Helper()
	harness.WaitDial(t, network, addr, timeout)
	deadline := time.Now().Add(timeout)
	for {
		err := harness.ProbeNBD(network, addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no NBD greeting on %s %s after %v: %v", network, addr, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shortTempDir is a directory for unix sockets (harness.ShortTempDir).
func shortTempDir() string { return harness.ShortTempDir() }

// cleanEnv is the test's environment without NBDD_* variables.
func cleanEnv() []string { return harness.CleanEnv() }

// pythonEnv puts the system python, which has libnbd's module, first on
// PATH for nbdsh (a pyenv python3 lacks it).
func pythonEnv(extra ...string) []string {
	env := []string{"PATH=/usr/bin:/bin:" + os.Getenv("PATH")}
	for _, kv := range cleanEnv() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// command is one client invocation with a time bound.
type command struct {
	name string
	args []string
	env  []string // nil: the test's environment
	dir  string   // working directory; "" is the test's
}

// run runs c and returns its combined output; it fails the test when c
// exits non-zero or takes longer than toolTimeout.
func (c command) run(t *testing.T) string {
	t.Helper()
	out, err := c.try(t)
	if err != nil {
		t.Fatalf("%s: %v\n%s", c, err, out)
	}
	return out
}

// try runs c and returns its combined output and error.
func (c command) try(t *testing.T) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.name, c.args...)
	cmd.Env, cmd.Dir = c.env, c.dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return string(out), err
}

func (c command) String() string {
	return c.name + " " + strings.Join(c.args, " ")
}

// nbdsh runs testdata/script under nbdsh connected to uri, with env as
// extra environment (scripts read their parameters from it). It returns the
// output and fails the test if the script fails or does not print OK.
func nbdsh(t *testing.T, uri, script string, env ...string) string {
	t.Helper()
	requireTool(t, "nbdsh")
	out := command{name: "nbdsh", env: pythonEnv(append(env, "URI="+uri)...), args: nbdshArgs(t, uri, script)}.run(t)
	if !regexp.MustCompile(`(?m)^OK\b`).MatchString(out) {
		t.Fatalf("nbdsh %s: no OK line in its output:\n%s", script, out)
	}
	return out
}

// nbdshArgs runs testdata/script in nbdsh connected to uri, with testdata
// on sys.path for nbdcheck.py.
func nbdshArgs(t *testing.T, uri, script string) []string {
	t.Helper()
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, script)
	return []string{"-u", uri,
		"-c", "import sys; sys.path.insert(0, " + pyQuote(dir) + ")",
		"-c", "exec(compile(open(" + pyQuote(path) + ").read(), " + pyQuote(path) + ", 'exec'))"}
}

// pyQuote renders s as a Python string literal.
func pyQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// syncBuffer is harness.SyncBuffer under the names the e2e tests use.
type syncBuffer struct{ harness.SyncBuffer }

// waitFor polls until the buffer contains s.
func (b *syncBuffer) waitFor(s string, timeout time.Duration) bool { return b.WaitFor(s, timeout) }
