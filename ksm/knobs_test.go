package ksm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestParseSelected(t *testing.T) {
	for in, want := range map[string]string{
		"[none] scan-time\n": "none", "none [scan-time]": "scan-time", " 100\n": "100", "[broken": "[broken", "": "",
	} {
		if got := ParseSelected(in); got != want {
			t.Errorf("ParseSelected(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestDir(t *testing.T) {
	root := t.TempDir()
	for name, v := range map[string]string{"run": "0\n", "pages_to_scan": "100\n", "advisor_mode": "[none] scan-time\n"} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := Dir{Root: root}
	if v, err := d.Read(KnobAdvisorMode); err != nil || v != AdvisorNone {
		t.Errorf("advisor_mode = %q, %v", v, err)
	}
	if err := d.Write(KnobPagesToScan, "5000"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "pages_to_scan")); string(b) != "5000\n" {
		t.Errorf("file holds %q", b)
	}
	if v, err := d.Read(KnobPagesToScan); err != nil || v != "5000" {
		t.Errorf("pages_to_scan = %q, %v", v, err)
	}
	if _, err := d.Read(KnobSmartScan); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing knob: %v", err)
	}
	if err := d.Write(KnobSmartScan, "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("write of a missing knob: %v", err)
	}
	for _, bad := range []string{"", "..", "../run", "a/b"} {
		if _, err := d.Read(bad); err == nil {
			t.Errorf("Read(%q) succeeded", bad)
		}
	}
	if !Exists(d, KnobRun) || Exists(d, KnobSmartScan) {
		t.Error("Exists is wrong")
	}
}

func TestFakeKernelRules(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *Fake)
		knob  string
		value string
		err   error
		after map[string]string
	}{
		{"run 1", nil, KnobRun, "1", nil, map[string]string{KnobRun: "1"}},
		{"run 3", nil, KnobRun, "3", syscall.EINVAL, map[string]string{KnobRun: "0"}},
		{"run text", nil, KnobRun, "on", syscall.EINVAL, nil},
		{"run 2 unmerges", func(f *Fake) { f.SetCounter("pages_shared", 5); f.SetCounter("full_scans", 9) },
			KnobRun, "2", nil, map[string]string{"pages_shared": "0", "full_scans": "0", KnobRun: "2"}},
		{"pages_to_scan", nil, KnobPagesToScan, "5000", nil, map[string]string{KnobPagesToScan: "5000"}},
		{"pages_to_scan negative", nil, KnobPagesToScan, "-1", syscall.EINVAL, nil},
		{"pages_to_scan in scan-time mode", func(f *Fake) { f.Write(KnobAdvisorMode, AdvisorScanTime) },
			KnobPagesToScan, "5000", syscall.EINVAL, map[string]string{KnobPagesToScan: "500"}},
		{"to scan-time resets pages_to_scan", func(f *Fake) { f.Write(KnobPagesToScan, "7"); f.Write(KnobAdvisorMinPagesToScan, "600") },
			KnobAdvisorMode, AdvisorScanTime, nil, map[string]string{KnobPagesToScan: "600", KnobAdvisorMode: AdvisorScanTime}},
		{"to none resets pages_to_scan", func(f *Fake) { f.Write(KnobAdvisorMode, AdvisorScanTime) },
			KnobAdvisorMode, AdvisorNone, nil, map[string]string{KnobPagesToScan: "100"}},
		{"same mode keeps pages_to_scan", func(f *Fake) { f.Write(KnobPagesToScan, "7") },
			KnobAdvisorMode, AdvisorNone, nil, map[string]string{KnobPagesToScan: "7"}},
		{"bad mode", nil, KnobAdvisorMode, "always", syscall.EINVAL, nil},
		{"merge_across_nodes idle", nil, KnobMergeAcrossNodes, "0", nil, map[string]string{KnobMergeAcrossNodes: "0"}},
		{"merge_across_nodes busy", func(f *Fake) { f.SetCounter("pages_shared", 1) }, KnobMergeAcrossNodes, "0", syscall.EBUSY, nil},
		{"max_page_sharing busy", func(f *Fake) { f.SetCounter("pages_shared", 1) }, KnobMaxPageSharing, "512", syscall.EBUSY, nil},
		{"max_page_sharing < 2", nil, KnobMaxPageSharing, "1", syscall.EINVAL, nil},
		{"counter read-only", nil, "pages_shared", "1", syscall.EACCES, nil},
		{"unknown", nil, "turbo", "1", syscall.ENOENT, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFake()
			if tt.setup != nil {
				tt.setup(f)
			}
			f.ResetWrites()
			err := f.Write(tt.knob, tt.value)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("Write(%s, %s) = %v; want %v", tt.knob, tt.value, err, tt.err)
			}
			for k, v := range tt.after {
				if got, _ := f.Read(k); got != v {
					t.Errorf("%s = %q; want %q", k, got, v)
				}
			}
			if n := len(f.Writes()); (err == nil) != (n == 1) {
				t.Errorf("recorded %d writes", n)
			}
		})
	}
}

// TestLockStateFile: a second throttler on the same state file is refused
// while the first holds it, and may take it once released.
func TestLockStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "ksm.snapshot")
	release, err := LockStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockStateFile(path); err == nil {
		t.Fatal("a second lock on the same state file succeeded")
	}
	release()
	release2, err := LockStateFile(path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release2()
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after release: %v; want it removed", err)
	}
}

// TestLockStillAt: a lock taken on a lock file that its holder removed
// (and another throttler created anew) in between is not kept, so that
// two throttlers never both hold a lock, one on the removed file and one
// on the new.
func TestLockStillAt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ksm.snapshot.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !stillAt(f, path) {
		t.Fatal("stillAt: false for the file at its path")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if stillAt(f, path) {
		t.Error("stillAt: true for a removed file")
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if stillAt(f, path) {
		t.Error("stillAt: true for a file replaced by another")
	}
}
