// Package testenv holds what nbdd's tests share about their environment.
package testenv

import (
	"os"
	"testing"
)

// SkipOutsideCI skips a test whose environment (a filesystem feature, a
// device, a kernel file) is missing, but fails it when CI is set: CI runs on
// a machine that has all of them, and a skip there would hide a regression.
func SkipOutsideCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}
