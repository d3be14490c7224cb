package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdd/nbdd/ksm"
	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
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

// cliOutput runs nbdd with args in this process and returns its stdout
// and error.
func cliOutput(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out strings.Builder
	app := newApp()
	app.Writer, app.ErrWriter = &out, io.Discard
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.Run(append([]string{"nbdd"}, args...))
	return out.String(), err
}

// TestKSMStatusJSON: ksm status --json prints the status as one JSON
// document, the knobs included.
func TestKSMStatusJSON(t *testing.T) {
	root := t.TempDir()
	for k, v := range map[string]string{"run": "1", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_shared": "7"} {
		require.NoError(t, os.WriteFile(filepath.Join(root, k), []byte(v+"\n"), 0o644))
	}
	out, err := cliOutput(t, "ksm", "status", "--json", "--ksm-root", root)
	require.NoError(t, err)
	var st ksm.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st), "output %q", out)
	require.Equal(t, "100", st.Knobs["pages_to_scan"])
	require.Equal(t, "1", st.Knobs["run"])
}

// kickRecorder is a throttler stand-in behind a control socket.
type kickRecorder struct{ events chan ksm.Event }

func (k kickRecorder) Send(e ksm.Event)   { k.events <- e }
func (k kickRecorder) Status() ksm.Status { return ksm.Status{} }

// TestKSMKick: ksm kick --socket sends a kick, with its reason, to the
// throttler behind a running nbdd's control socket.
func TestKSMKick(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ksm.sock")
	l, err := ksm.ListenSocket(sock)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := kickRecorder{events: make(chan ksm.Event, 1)}
	go ksm.Serve(ctx, l, rec)
	out, err := cliOutput(t, "ksm", "kick", "--socket", sock, "new-images")
	require.NoError(t, err)
	require.Equal(t, "nbdd: KSM throttler kicked\n", out)
	select {
	case e := <-rec.events:
		require.Equal(t, ksm.EventKick, e.Kind)
		require.Equal(t, "new-images", e.Name)
	case <-time.After(5 * time.Second):
		t.Fatal("no kick reached the throttler")
	}
	_, err = cliOutput(t, "ksm", "kick", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	require.ErrorContains(t, err, "ksm kick: ")
}
