package ksm

import (
	"io/fs"
	"maps"
	"strconv"
	"sync"
	"syscall"
)

// Write records one successful write to a Fake.
type Write struct {
	Name, Value string
}

// Fake is an in-memory KnobStore that enforces the kernel's store rules from
// mm/ksm.c (see Documentation/admin-guide/mm/ksm.rst):
//
//   - run accepts 0, 1 and 2 only; 2 unmerges, which zeroes the merge counters;
//   - pages_to_scan is EINVAL while advisor_mode is scan-time;
//   - merge_across_nodes and max_page_sharing are EBUSY while pages_shared != 0;
//   - switching advisor_mode resets pages_to_scan: to 100 for none, to
//     advisor_min_pages_to_scan for scan-time;
//   - counters are read-only (EACCES) and unknown names do not exist (ENOENT).
//
// NewFake starts with the defaults of Linux 6.18. The zero value is not usable.
// A Fake is safe for concurrent use; it is exported so that other packages' tests
// can drive a Throttler without root.
type Fake struct {
	mu       sync.Mutex
	values   map[string]string
	counters map[string]bool
	writes   []Write
}

var fakeKnobDefaults = map[string]string{
	KnobRun: "0", KnobPagesToScan: "100", KnobSleepMillisecs: "20",
	KnobAdvisorMode: AdvisorNone, KnobAdvisorMaxCPU: "70", KnobAdvisorTargetScanTime: "200",
	KnobAdvisorMinPagesToScan: "500", KnobAdvisorMaxPagesToScan: "30000",
	KnobMergeAcrossNodes: "1", KnobMaxPageSharing: "256", KnobUseZeroPages: "0",
	KnobSmartScan: "1", KnobStableNodeChainsPruneMillisecs: "2000",
}

// NewFake returns a Fake with the knob defaults and zero counters of Linux 6.18.
func NewFake() *Fake {
	f := &Fake{values: maps.Clone(fakeKnobDefaults), counters: map[string]bool{}}
	for _, c := range counterNames {
		f.values[c] = "0"
		f.counters[c] = true
	}
	return f
}

// Read implements KnobStore.
func (f *Fake) Read(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[name]
	if !ok {
		return "", &fs.PathError{Op: "read", Path: name, Err: syscall.ENOENT}
	}
	return v, nil
}

// Write implements KnobStore with the kernel's rules and records successful writes.
func (f *Fake) Write(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.store(name, value); err != nil {
		return &fs.PathError{Op: "write", Path: name, Err: err}
	}
	f.writes = append(f.writes, Write{name, value})
	return nil
}

func (f *Fake) store(name, value string) error {
	if _, ok := f.values[name]; !ok {
		return syscall.ENOENT
	}
	if f.counters[name] {
		return syscall.EACCES
	}
	switch name {
	case KnobAdvisorMode:
		return f.storeAdvisorMode(value)
	case KnobRun:
		return f.storeRun(value)
	case KnobPagesToScan:
		if f.values[KnobAdvisorMode] == AdvisorScanTime {
			return syscall.EINVAL
		}
	case KnobMergeAcrossNodes, KnobMaxPageSharing:
		if f.values["pages_shared"] != "0" {
			return syscall.EBUSY
		}
	}
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil || (name == KnobMaxPageSharing && n < 2) ||
		(name == KnobMergeAcrossNodes && n > 1) || (name == KnobAdvisorTargetScanTime && n < 1) {
		return syscall.EINVAL
	}
	f.values[name] = strconv.FormatUint(n, 10)
	return nil
}

func (f *Fake) storeAdvisorMode(value string) error {
	if value != AdvisorNone && value != AdvisorScanTime {
		return syscall.EINVAL
	}
	if f.values[KnobAdvisorMode] != value { // set_advisor_defaults() runs only on a change
		f.values[KnobPagesToScan] = "100"
		if value == AdvisorScanTime {
			f.values[KnobPagesToScan] = f.values[KnobAdvisorMinPagesToScan]
		}
	}
	f.values[KnobAdvisorMode] = value
	return nil
}

func (f *Fake) storeRun(value string) error {
	switch value {
	case "0", "1":
	case "2":
		for _, c := range []string{"pages_shared", "pages_sharing", "pages_unshared",
			"pages_volatile", "full_scans", "general_profit"} {
			f.values[c] = "0"
		}
	default:
		return syscall.EINVAL
	}
	f.values[KnobRun] = value
	return nil
}

// Set sets a knob or counter without applying any rule and without recording a
// write, as the kernel (ksmd, or another tuner) would. Counters are set this way.
func (f *Fake) Set(name, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[name] = value
}

// SetCounter sets the counter name to n; see Set.
func (f *Fake) SetCounter(name string, n int64) {
	f.Set(name, strconv.FormatInt(n, 10))
}

// Remove deletes a knob, to emulate older kernels (for example without advisor_mode).
func (f *Fake) Remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.values, name)
}

// Writes returns the successful writes so far, oldest first.
func (f *Fake) Writes() []Write {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Write(nil), f.writes...)
}

// ResetWrites forgets the recorded writes.
func (f *Fake) ResetWrites() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = nil
}

// Values returns a copy of every knob and counter.
func (f *Fake) Values() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.values)
}
