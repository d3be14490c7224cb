package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDirHoldsNoLoadFile: a writable load export's file may not also be
// reachable through --dir, under its own name or a symlink; a read-only
// load export, or a file the directory cannot reach, may.
func TestDirHoldsNoLoadFile(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	inDir := filepath.Join(dir, "disk.img")
	inSubdir := filepath.Join(dir, "sub", "real.img") // exported only through alias.img
	outside := filepath.Join(elsewhere, "other.img")
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{inDir, inSubdir, outside} {
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("sub/real.img", filepath.Join(dir, "alias.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape.img")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		path     string
		copyBack bool
		want     string // in the error; "" for none
	}{
		{"writable load export in the directory", inDir, true, "disk.img"},
		{"read-only load export in the directory", inDir, false, ""},
		{"writable load export reached through a symlink", inSubdir, true, "alias.img"},
		// os.Root refuses symlinks that leave the directory, so the
		// directory never exports escape.img, and it is no conflict.
		{"writable load export elsewhere", outside, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			cfg := &config{dir: dir, files: []exportedFile{{name: "a", info: info, copyBack: tc.copyBack}}}
			err = cfg.checkDirHoldsNoLoadFile()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v; want one naming %q", err, tc.want)
			}
		})
	}
}
