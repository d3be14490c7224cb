package e2e

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// runNBDD runs nbdd to completion (within startTimeout) and returns its
// stdout, its stderr and its exit status.
func runNBDD(t *testing.T, env []string, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nbddBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("nbdd %s still running after %v; want it to exit\nstderr:\n%s", strings.Join(args, " "), startTimeout, errOut.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		status = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), status
}

// TestCLIUsageErrors checks that command-line mistakes give status 2 and
// exactly one line on stderr, with no stack trace, before anything is
// served. A unix listener is always given, so that a mistake nbdd failed
// to catch could not take the default port.
func TestCLIUsageErrors(t *testing.T) {
	sock := "unix://" + filepath.Join(t.TempDir(), "s")
	dir := t.TempDir()
	same := filepath.Join(dir, "same.img")
	if err := os.WriteFile(same, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string // a word the one line must contain
	}{
		{"memory without size", []string{"--memory", "bad"}, nil, "bad"},
		{"memory bad size", []string{"--memory", "a=12Q"}, nil, "12Q"},
		{"memory unknown option", []string{"--memory", "a=1M,bogus"}, nil, "bogus"},
		{"unknown strategy", []string{"--strategy", "nope"}, nil, "nope"},
		{"missing file", []string{"--export", "x=/nonexistent/disk.img"}, nil, "/nonexistent/disk.img"},
		{"duplicate export", []string{"--memory", "a=1M", "--memory", "a=2M"}, nil, "a"},
		{"bad listen URL", []string{"--listen", "ftp://host:1"}, nil, "ftp://host:1"},
		{"bad queue depth", []string{"--queue-depth", "0"}, nil, "queue-depth"},
		{"bad max request size", []string{"--max-request-size", "lots"}, nil, "lots"},
		{"max request size below 64 KiB", []string{"--max-request-size", "1KiB"}, nil, "max-request-size"},
		{"tls-only export without TLS", []string{"--memory", "s=1M,tls-only"}, nil, "tls-only"},
		{"value on a bare option", []string{"--memory", "s=1M,ro=false"}, nil, "ro"},
		{"ksm with prealloc", []string{"--memory", "s=1M,ksm,prealloc"}, nil, "prealloc"},
		{"load export of a file exported twice", []string{"--export", "a=" + same + ",load", "--export", "b=" + same + ",ro"}, nil, "same file"},
		{"load export of a file in --dir", []string{"--dir", dir, "--export", "a=" + same + ",load"}, nil, "same.img"},
		{"negative max connections", []string{"--max-connections", "-1"}, nil, "max-connections"},
		{"negative idle timeout", []string{"--idle-timeout", "-1s"}, nil, "idle-timeout"},
		{"bad send buffer", []string{"--send-buffer", "big"}, nil, "big"},
		{"negative backend calls", []string{"--max-backend-calls", "-3"}, nil, "max-backend-calls"},
		{"tiny send buffer", []string{"--send-buffer", "12"}, nil, "send-buffer"},
		{"unknown flag", []string{"--bogus-flag"}, nil, "bogus-flag"},
		{"stray argument", []string{"disk.img"}, nil, "disk.img"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "loud"},
		{"bad fault spec", []string{"--fault", "read:zz"}, nil, "fault"},
		{"bad metrics address", []string{"--metrics", "nowhere"}, nil, "nowhere"},
		{"strategy from env", nil, []string{"NBDD_STRATEGY=nope"}, "nope"},
		{"memory from env", nil, []string{"NBDD_MEMORY=envdisk=huge"}, "huge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"serve", "--listen", sock}, tc.args...)
			stdout, stderr, status := runNBDD(t, tc.env, args...)
			if status != 2 {
				t.Errorf("nbdd %s: exit status %d; want 2\nstderr:\n%s", strings.Join(args, " "), status, stderr)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || lines[0] == "" {
				t.Errorf("stderr has %d lines; want exactly one:\n%s", len(lines), stderr)
			}
			for _, bad := range []string{"goroutine ", "panic", ".go:"} {
				if strings.Contains(stderr, bad) {
					t.Errorf("stderr looks like a stack trace (%q):\n%s", bad, stderr)
				}
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.want)
			}
			if !strings.HasPrefix(stderr, "nbdd: ") {
				t.Errorf("stderr %q does not start with \"nbdd: \"", stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q; want nothing (no help dump, no export announced)", stdout)
			}
		})
	}
}

// TestCLIVersion checks `nbdd version` and `nbdd --version`: the version
// and the commit it was built from, which in a git checkout (a .git
// directory, as in CI's clone) must be the checkout's HEAD.
func TestCLIVersion(t *testing.T) {
	re := regexp.MustCompile(`^nbdd v?\d+\.\d+\.\d+\S* \((commit ([0-9a-f]{12})|module \S+|commit unknown: built without VCS information)(, modified)?, go\S+\)\n$`)
	for _, args := range [][]string{{"version"}, {"--version"}} {
		stdout, stderr, status := runNBDD(t, nil, args...)
		m := re.FindStringSubmatch(stdout)
		if status != 0 || m == nil {
			t.Fatalf("nbdd %s: status %d, stdout %q, stderr %q; want 0 and %q", args[0], status, stdout, stderr, re)
		}
		head, err := exec.Command("git", "rev-parse", "HEAD").Output()
		fi, statErr := os.Stat("../../.git")
		switch {
		case m[2] != "" && err == nil && !strings.HasPrefix(string(head), m[2]):
			t.Errorf("nbdd %s names commit %s; want HEAD %s", args[0], m[2], head)
		case m[2] == "" && err == nil && statErr == nil && fi.IsDir():
			t.Errorf("nbdd %s: %q; want the commit of this git checkout (%s)", args[0], stdout, strings.TrimSpace(string(head)))
		}
	}
}

// TestServeDefaults checks `nbdd serve` with no flags: a 1 GiB memory
// export named "default" on 127.0.0.1:10809, announced as an NBD URI, also
// reachable under the empty export name. On a shared machine 10809 may be
// taken; then NBDD_LISTEN moves it, and the printed URI must follow.
func TestServeDefaults(t *testing.T) {
	requireTool(t, "nbdinfo")
	wantHost := "127.0.0.1:10809"
	var env []string
	if l, err := net.Listen("tcp", wantHost); err != nil {
		t.Logf("%s is busy (%v): moving nbdd with NBDD_LISTEN", wantHost, err)
		wantHost, env = "", []string{"NBDD_LISTEN=tcp://127.0.0.1:0"}
	} else {
		l.Close()
	}
	s := launchNBDD(t, env, []string{"serve"}, 1)
	if len(s.uris) != 1 || len(s.uris["default"]) != 1 {
		t.Fatalf("announced %v; want one URI for export \"default\"", s.uris)
	}
	raw := s.uris["default"][0]
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "nbd" || u.Path != "/default" {
		t.Fatalf("announced URI %q: want nbd://HOST:PORT/default", raw)
	}
	if host, _, _ := net.SplitHostPort(u.Host); host != "127.0.0.1" {
		t.Errorf("announced host %q; want 127.0.0.1 (loopback by default)", u.Host)
	}
	if wantHost != "" && u.Host != wantHost {
		t.Errorf("announced %q; want %s", u.Host, wantHost)
	}
	waitDial(t, "tcp", u.Host, startTimeout)
	for _, uri := range []string{raw, "nbd://" + u.Host + "/"} {
		info := nbdinfo(t, uri)
		if len(info.Exports) != 1 || info.Exports[0].Size != 1<<30 || info.Exports[0].IsReadOnly {
			t.Errorf("nbdinfo %s: %+v; want one writable export of %d bytes", uri, info.Exports, 1<<30)
		}
	}
}

// TestSocketInUse checks that nbdd refuses a unix socket a live server
// answers on, with one line and a non-zero status, and leaves that server
// serving.
func TestSocketInUse(t *testing.T) {
	requireTool(t, "nbdinfo")
	s := startNBDD(t, "--memory", "disk=1M")
	_, stderr, status := runNBDD(t, nil, "serve", "--listen", "unix://"+s.sock, "--memory", "other=1M")
	if status == 0 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "in use") {
		t.Errorf("second nbdd on a live socket: status %d, stderr %q; want non-zero and one line saying it is in use", status, stderr)
	}
	if info := nbdinfo(t, s.unixURI(t, "disk")); len(info.Exports) != 1 || info.Exports[0].Size != 1<<20 {
		t.Errorf("first server after the refused start: %+v; want export disk of 1 MiB", info.Exports)
	}
}

// TestCLICommands: "nbdd help [COMMAND]" prints help; an unknown command,
// at the top or under ksm, is one line and status 2.
func TestCLICommands(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		status int
		want   string // in stdout for status 0, else in the one stderr line
	}{
		{[]string{"help"}, 0, "serve"},
		{[]string{"help", "serve"}, 0, "--memory-budget"},
		{[]string{"help", "nope"}, 2, "nope"},
		{[]string{"bogus"}, 2, "bogus"},
		{[]string{"ksm", "bogus"}, 2, "bogus"},
	} {
		stdout, stderr, status := runNBDD(t, nil, tc.args...)
		out := stdout
		if tc.status != 0 {
			out = stderr
			if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(stderr, "nbdd: ") {
				t.Errorf("nbdd %v: stderr %q; want one line starting \"nbdd: \"", tc.args, stderr)
			}
		}
		if status != tc.status || !strings.Contains(out, tc.want) {
			t.Errorf("nbdd %v: status %d, output %q; want status %d and %q", tc.args, status, out, tc.status, tc.want)
		}
	}
}
