package ksm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"
)

// statusKnobs are the knobs Status reports, when the kernel has them.
var statusKnobs = []string{
	KnobRun, KnobPagesToScan, KnobSleepMillisecs, KnobAdvisorMode, KnobAdvisorMaxCPU,
	KnobAdvisorTargetScanTime, KnobAdvisorMinPagesToScan, KnobAdvisorMaxPagesToScan,
	KnobMergeAcrossNodes, KnobMaxPageSharing, KnobUseZeroPages, KnobSmartScan,
	KnobStableNodeChainsPruneMillisecs,
}

// ExportStatus is one registered export.
type ExportStatus struct {
	Name        string  `json:"name"`
	Bytes       int64   `json:"bytes"`            // size announced by ExportOpened
	Base        uintptr `json:"base,omitempty"`   // start of its mapping, if registered
	Length      uintptr `json:"length,omitempty"` // length of its mapping, if registered
	MergedBytes int64   `json:"merged_bytes"`     // smaps "KSM:" bytes of the mapping
}

// Status is what `nbdd ksm status` prints: the throttler's state, the knobs, the
// host-wide counters, this process's ksm_stat and the per-export merged bytes.
type Status struct {
	// Running is true when a Throttler produced the status (not ReadStatus).
	Running bool `json:"running"`
	// State and Since are the level and when it began.
	State State     `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// Policy is the policy in force.
	Policy Policy `json:"policy"`
	// Knobs are the current values of the KSM knobs that exist.
	Knobs map[string]string `json:"knobs"`
	// Snapshot holds the original values while the knobs are tuned.
	Snapshot Snapshot `json:"snapshot,omitempty"`
	// Unmanaged lists the knobs that someone else changed and we let go.
	Unmanaged []string `json:"unmanaged,omitempty"`
	// Counters are the host-wide counters.
	Counters Counters `json:"counters"`
	// Process is /proc/self/ksm_stat of the throttler's process, if readable.
	Process *ProcStat `json:"process,omitempty"`
	// Exports are the registered exports, sorted by name.
	Exports []ExportStatus `json:"exports,omitempty"`
}

// ReadStatus reads the knobs and counters from store, without a Throttler.
func ReadStatus(store KnobStore) (Status, error) {
	s := Status{Knobs: map[string]string{}}
	for _, k := range statusKnobs {
		v, err := store.Read(k)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return s, err
		}
		s.Knobs[k] = v
	}
	var err error
	s.Counters, err = ReadCounters(store)
	return s, err
}

// Status returns the throttler's status. Read errors leave fields empty.
func (t *Throttler) Status() Status {
	s, err := ReadStatus(t.store)
	if err != nil {
		t.log.Debug("ksm: status", "err", err)
	}
	s.Running = true
	if ps, err := ReadProcStat(t.procStat); err == nil {
		s.Process = &ps
	}
	t.mu.Lock()
	s.State, s.Since, s.Policy = t.state, t.since, t.policy
	s.Snapshot = maps.Clone(t.snap)
	s.Unmanaged = slices.Sorted(maps.Keys(t.foreign))
	for name, e := range t.exports {
		s.Exports = append(s.Exports, ExportStatus{Name: name, Bytes: e.bytes, Base: e.base, Length: e.length})
	}
	t.mu.Unlock()
	slices.SortFunc(s.Exports, func(a, b ExportStatus) int { return strings.Compare(a.Name, b.Name) })
	for i, e := range s.Exports {
		if e.Length > 0 {
			s.Exports[i].MergedBytes, _ = MappingKSMBytes(t.smaps, e.Base, e.Length)
		}
	}
	return s
}

// Print writes s as human-readable text.
func (s Status) Print(w io.Writer) error {
	var b strings.Builder
	if s.Running {
		fmt.Fprintf(&b, "throttler: %s (policy %s) since %s\n", s.State, s.Policy, s.Since.Format(time.RFC3339))
	} else {
		b.WriteString("throttler: not running\n")
	}
	b.WriteString("knobs:\n")
	for _, k := range slices.Sorted(maps.Keys(s.Knobs)) {
		orig := ""
		if v, ok := s.Snapshot[k]; ok && v != s.Knobs[k] {
			orig = " (original " + v + ")"
		}
		fmt.Fprintf(&b, "  %-36s %s%s\n", k, s.Knobs[k], orig)
	}
	if len(s.Unmanaged) > 0 {
		fmt.Fprintf(&b, "unmanaged (changed by someone else): %s\n", strings.Join(s.Unmanaged, ", "))
	}
	b.WriteString("counters:\n")
	c := s.Counters
	for i, p := range c.fields() {
		fmt.Fprintf(&b, "  %-36s %d\n", counterNames[i], *p)
	}
	if p := s.Process; p != nil {
		fmt.Fprintf(&b, "process: merging_pages %d rmap_items %d profit %d mergeable %t merge_any %t\n",
			p.MergingPages, p.RmapItems, p.ProcessProfit, p.Mergeable, p.MergeAny)
	}
	for _, e := range s.Exports {
		fmt.Fprintf(&b, "export %s: %d bytes, %d merged\n", e.Name, e.Bytes, e.MergedBytes)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
