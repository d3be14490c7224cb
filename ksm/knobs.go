package ksm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultRoot is the sysfs directory of the KSM knobs and counters
// (Documentation/admin-guide/mm/ksm.rst, "KSM daemon sysfs interface").
const DefaultRoot = "/sys/kernel/mm/ksm"

// Names of the writable KSM knobs under DefaultRoot, as documented in
// Documentation/admin-guide/mm/ksm.rst.
const (
	// KnobRun: 0 stops ksmd and keeps merged pages, 1 runs ksmd, 2 stops it and
	// unmerges everything. The throttler never writes 2.
	KnobRun = "run"
	// KnobPagesToScan is how many pages ksmd scans before it sleeps. The kernel
	// rejects writes with EINVAL while advisor_mode is scan-time.
	KnobPagesToScan = "pages_to_scan"
	// KnobSleepMillisecs is how long ksmd sleeps between batches.
	KnobSleepMillisecs = "sleep_millisecs"
	// KnobAdvisorMode selects the scan-time advisor ("none" or "scan-time").
	// Switching it resets pages_to_scan (to 100, or to advisor_min_pages_to_scan).
	KnobAdvisorMode = "advisor_mode"
	// KnobAdvisorMaxCPU is the advisor's ksmd CPU ceiling in percent.
	KnobAdvisorMaxCPU = "advisor_max_cpu"
	// KnobAdvisorTargetScanTime is the advisor's target time for a full scan, in seconds.
	KnobAdvisorTargetScanTime = "advisor_target_scan_time"
	// KnobAdvisorMinPagesToScan is the advisor's lower bound for pages_to_scan.
	KnobAdvisorMinPagesToScan = "advisor_min_pages_to_scan"
	// KnobAdvisorMaxPagesToScan is the advisor's upper bound for pages_to_scan.
	KnobAdvisorMaxPagesToScan = "advisor_max_pages_to_scan"
	// KnobMergeAcrossNodes is EBUSY while pages_shared != 0; the throttler never writes it.
	KnobMergeAcrossNodes = "merge_across_nodes"
	// KnobMaxPageSharing is EBUSY while pages_shared != 0; the throttler never writes it.
	KnobMaxPageSharing = "max_page_sharing"
	// KnobUseZeroPages makes KSM merge empty pages with the kernel's zero page.
	KnobUseZeroPages = "use_zero_pages"
	// KnobSmartScan makes ksmd skip pages that repeatedly failed to merge.
	KnobSmartScan = "smart_scan"
	// KnobStableNodeChainsPruneMillisecs is how often stable node chains are pruned.
	KnobStableNodeChainsPruneMillisecs = "stable_node_chains_prune_millisecs"
)

// Values of KnobAdvisorMode.
const (
	AdvisorNone     = "none"
	AdvisorScanTime = "scan-time"
)

// KnobStore reads and writes KSM sysfs files by name. Read returns the value with
// surrounding whitespace trimmed and, for multiple-choice files such as
// advisor_mode ("[none] scan-time"), only the selected choice ("none").
// Implementations must be safe for concurrent use. The Throttler depends on this
// interface, not on sysfs: tests use Dir on a temporary directory or a Fake.
type KnobStore interface {
	Read(name string) (string, error)
	Write(name, value string) error
}

// Dir is a KnobStore over a directory of files, normally DefaultRoot.
// The zero value uses DefaultRoot.
type Dir struct {
	// Root is the directory; "" means DefaultRoot.
	Root string
}

func (d Dir) path(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", fmt.Errorf("ksm: bad knob name %q", name)
	}
	root := d.Root
	if root == "" {
		root = DefaultRoot
	}
	return filepath.Join(root, name), nil
}

// Read returns the trimmed content of the file name, with the selected choice
// extracted from bracketed multiple-choice values (see ParseSelected).
func (d Dir) Read(name string) (string, error) {
	p, err := d.path(name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("ksm: read %s: %w", name, err)
	}
	return ParseSelected(string(b)), nil
}

// Write writes value and a newline to the file name, as echo(1) would. Kernel
// errors (EINVAL, EBUSY) are returned wrapped, so errors.Is(err, syscall.EBUSY) works.
func (d Dir) Write(name, value string) error {
	p, err := d.path(name)
	if err != nil {
		return err
	}
	// O_TRUNC matters only for regular files (tests); sysfs ignores it.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("ksm: write %s: %w", name, err)
	}
	_, werr := f.WriteString(value + "\n")
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("ksm: write %s=%s: %w", name, value, err)
	}
	return nil
}

// ParseSelected trims s and, if it lists choices with one in brackets, as
// advisor_mode does ("[none] scan-time"), returns the bracketed choice.
func ParseSelected(s string) string {
	s = strings.TrimSpace(s)
	i := strings.IndexByte(s, '[')
	if i < 0 {
		return s
	}
	j := strings.IndexByte(s[i:], ']')
	if j < 0 {
		return s
	}
	return s[i+1 : i+j]
}

// Exists reports whether store has the knob or counter name. It is used to probe
// for kernel features such as the scan-time advisor (Linux 6.8).
func Exists(store KnobStore, name string) bool {
	_, err := store.Read(name)
	return err == nil
}
