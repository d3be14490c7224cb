package ksm

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchPolicies are the fixed settings TestKSMBench compares with the
// Throttler ("throttler", "throttler-advisor"). "aggressive" holds the
// Throttler's aggressive level for the whole window.
var benchPolicies = map[string][]Write{
	"default":    {{KnobAdvisorMode, AdvisorNone}, {KnobPagesToScan, "100"}, {KnobSleepMillisecs, "20"}, {KnobRun, "1"}},
	"aggressive": {{KnobAdvisorMode, AdvisorNone}, {KnobPagesToScan, "aggressive"}, {KnobSleepMillisecs, "1"}, {KnobRun, "1"}},
	"advisor":    {{KnobAdvisorMode, AdvisorScanTime}, {KnobSleepMillisecs, "20"}, {KnobRun, "1"}},
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestKSMBench measures one KSM policy on NBDD_KSM_IMAGES (4) identical
// images of NBDD_KSM_MB (256) MiB in MADV_MERGEABLE private anonymous mappings,
// as the memory backend creates them: the time until 90% of their pages are
// KSM pages (smaps) and ksmd's CPU seconds over NBDD_KSM_WINDOW (300) seconds.
// NBDD_KSM_BENCH names the policy; bench/ksm.sh runs them all.
func TestKSMBench(t *testing.T) {
	policy := os.Getenv("NBDD_KSM_BENCH")
	if policy == "" {
		t.Skip("set NBDD_KSM_BENCH=default|aggressive|advisor|throttler|throttler-advisor (see bench/ksm.sh)")
	}
	requireRealKSM(t)
	n, size := envInt("NBDD_KSM_IMAGES", 4), envInt("NBDD_KSM_MB", 256)<<20
	window := time.Duration(envInt("NBDD_KSM_WINDOW", 300)) * time.Second
	ksmd, err := ksmdPID()
	if err != nil {
		t.Fatal(err)
	}
	regions := make([][]byte, n)
	for i := range regions {
		regions[i] = mergeableRegion(t, size)
	}
	stop := startPolicy(t, policy, regions)
	defer stop()
	cpu0, start := ksmdCPU(t, ksmd), time.Now()
	t90 := time.Duration(-1)
	for time.Since(start) < window {
		if t90 < 0 && mergedFraction(t, regions) >= 0.9 {
			t90 = time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
	cpu := ksmdCPU(t, ksmd) - cpu0
	t.Logf("bench: policy=%s images=%d size=%dMiB window=%v t90=%v ksmd_cpu=%.1fs merged=%.1f%%",
		policy, n, size>>20, window, t90.Round(100*time.Millisecond), cpu, 100*mergedFraction(t, regions))
}

// startPolicy applies policy and returns a function that restores the knobs.
func startPolicy(t *testing.T, policy string, regions [][]byte) (stop func()) {
	t.Helper()
	store := Dir{}
	if strings.HasPrefix(policy, "throttler") {
		p := PolicyRate
		if policy == "throttler-advisor" {
			p = PolicyAdvisor
		}
		_, stop := startReal(t, p, regions...)
		return func() {
			if err := stop(); err != nil {
				t.Error(err)
			}
		}
	}
	writes, ok := benchPolicies[policy]
	if !ok {
		t.Fatalf("unknown policy %q", policy)
	}
	snap, err := takeSnapshot(store)
	if err != nil {
		t.Fatal(err)
	}
	total := int64(len(regions) * len(regions[0]))
	for _, w := range writes {
		if w.Value == "aggressive" {
			w.Value = strconv.FormatInt(pagesToScan(total, int64(os.Getpagesize()), 10, 100, 30000), 10)
		}
		if err := store.Write(w.Name, w.Value); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		for _, w := range restorePlan(snap) {
			if err := store.Write(w.Name, w.Value); err != nil {
				t.Error(err)
			}
		}
	}
}

// mergedFraction is the share of the regions' bytes that are KSM pages.
func mergedFraction(t *testing.T, regions [][]byte) float64 {
	var merged, total int64
	for _, r := range regions {
		m, err := MappingKSMBytes(DefaultSmaps, base(r), uintptr(len(r)))
		if err != nil {
			t.Fatal(err)
		}
		merged, total = merged+m, total+int64(len(r))
	}
	return float64(merged) / float64(total)
}

// ksmdPID finds the ksmd kernel thread.
func ksmdPID() (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); strings.TrimSpace(string(b)) == "ksmd" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no ksmd thread")
}

// ksmdCPU returns ksmd's utime+stime in seconds (proc(5): fields 14 and 15, in
// clock ticks of 1/100 s on Linux).
func ksmdCPU(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // field 3 onwards
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return float64(ut+st) / 100
}
