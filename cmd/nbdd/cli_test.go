package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCLIMessages: each command-line mistake gets one line that says what
// is wrong and what to do, with status 2.
func TestCLIMessages(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	long := strings.Repeat("x", 5000)
	state := filepath.Join(dir, "ksm.snapshot")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"duration without a unit", []string{"serve", "--handshake-timeout", "10"},
			`invalid value "10" for --handshake-timeout: want a duration with a unit, such as 10s, 500ms or 2m`},
		{"bad duration", []string{"serve", "--idle-timeout", "soon"},
			`invalid value "soon" for --idle-timeout: want a duration with a unit`},
		{"socket listed twice", []string{"serve", "--listen", "unix://" + sock, "--listen", "unix:" + sock},
			"--listen unix://" + sock + " and --listen unix:" + sock + " are the same socket: list it once"},
		{"tcp address listed twice", []string{"serve", "--listen", "127.0.0.1:1", "--listen", "tcp://127.0.0.1:1"},
			"are the same socket"},
		{"ksm policy without --ksm", []string{"serve", "--listen", "unix:" + sock, "--ksm-policy", "advisor"}, "--ksm-policy needs --ksm"},
		{"bogus ksm policy", []string{"serve", "--listen", "unix:" + sock, "--ksm-policy", "bogus"}, `--ksm-policy: `},
		{"ksm state file without --ksm", []string{"serve", "--listen", "unix:" + sock, "--ksm-state-file", state}, "--ksm-state-file needs --ksm"},
		{"ksm socket without --ksm", []string{"serve", "--listen", "unix:" + sock, "--ksm-socket", sock + ".ksm"}, "--ksm-socket needs --ksm"},
		{"5000-byte export name", []string{"serve", "--listen", "unix:" + sock, "--memory", long + "=1M"},
			`--memory "` + strings.Repeat("x", 64) + `"... (5000 bytes): export name of 5000 bytes; NBD allows at most 4096`},
		{"ksm kick without socket", []string{"ksm", "kick"}, "ksm kick needs --socket PATH"},
		{"bad log format", []string{"serve", "--listen", "unix:" + sock, "--log-format", "xml"}, `--log-format "xml": want text or json`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := attachCLI(t, tc.args...)
			require.Equal(t, 2, status, "exit status; message %q", msg)
			require.Contains(t, msg, tc.want)
			require.NotContains(t, msg, "\n", "one line")
			require.Less(t, len(msg), 400, "message length")
		})
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("%s exists: a refused command line listened", sock)
	}
}

// TestParseListenURL: unix:PATH takes a relative path, as qemu spells it,
// instead of being read as HOST:PORT.
func TestParseListenURL(t *testing.T) {
	for _, tc := range []struct{ in, network, addr string }{
		{"unix:relative.sock", "unix", "relative.sock"},
		{"unix:/run/nbdd.sock", "unix", "/run/nbdd.sock"},
		{"unix:///run/nbdd.sock", "unix", "/run/nbdd.sock"},
		{"unix://rel/s", "unix", "rel/s"},
		{"tcp://127.0.0.1:10809", "tcp", "127.0.0.1:10809"},
		{"[::1]:10809", "tcp", "[::1]:10809"},
	} {
		network, addr, err := parseListenURL(tc.in)
		if err != nil || network != tc.network || addr != tc.addr {
			t.Errorf("parseListenURL(%q) = %s %s, %v; want %s %s", tc.in, network, addr, err, tc.network, tc.addr)
		}
	}
}

// TestFaultsInHelp: an NBDD_FAULT left in the environment is named in
// nbdd serve --help, and --fault is listed there.
func TestFaultsInHelp(t *testing.T) {
	t.Setenv("NBDD_FAULT", "read:eio")
	out := helpOf(t, "serve", "--help")
	require.Contains(t, out, `WARNING: NBDD_FAULT="read:eio" is set`)
	require.Contains(t, out, "--fault SPEC")
}
