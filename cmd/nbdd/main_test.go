package main

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestDescribeBuild: nbdd version names the commit it was built from, from
// the VCS stamp of a build in a checkout or the module version of
// `go install ...@VERSION`.
func TestDescribeBuild(t *testing.T) {
	stamped := &debug.BuildInfo{GoVersion: "go1.25.5", Settings: []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "7cac783b16c4b0c3a25958649c190e7549a53157"},
		{Key: "vcs.modified", Value: "true"},
	}}
	installed := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261207011600-7cac783b16c4"}}
	bare := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}
	for _, tc := range []struct {
		info *debug.BuildInfo
		want string
	}{
		{stamped, "nbdd 1.0 (commit 7cac783b16c4, modified, go1.25.5)"},
		{installed, "nbdd 1.0 (module v0.0.0-20261207011600-7cac783b16c4, go1.26.8)"},
		{bare, "nbdd 1.0 (commit unknown: built without VCS information, go1.26.8)"},
		{nil, "nbdd 1.0"},
	} {
		if got := describeBuild("1.0", tc.info); got != tc.want {
			t.Errorf("describeBuild: got %q; want %q", got, tc.want)
		}
	}
}

// TestHelpStatesEachDefaultOnce: no flag's help shows two defaults, as
// "(default) (default: false)" or "(default: 512, ...) (default: 0)" did.
func TestHelpStatesEachDefaultOnce(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--help"}, {"attach", "--help"}, {"detach", "--help"},
		{"ksm", "status", "--help"}, {"ksm", "kick", "--help"}, {"image", "info", "--help"},
	} {
		out := helpOf(t, args...)
		for _, line := range strings.Split(out, "\n") {
			if n := strings.Count(line, "(default"); n > 1 {
				t.Errorf("nbdd %s: %q states a default %d times", strings.Join(args, " "), strings.TrimSpace(line), n)
			}
			if strings.Contains(line, "(default: false)") {
				t.Errorf("nbdd %s: %q: a switch's default printed", strings.Join(args, " "), strings.TrimSpace(line))
			}
		}
	}
}

// helpOf runs nbdd with args in this process and returns what it printed.
func helpOf(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &out
	app.ExitErrHandler = func(*cli.Context, error) {}
	if err := app.Run(append([]string{"nbdd"}, args...)); err != nil {
		t.Fatalf("nbdd %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}
