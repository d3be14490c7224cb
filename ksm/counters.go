package ksm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"strconv"
	"strings"
)

// Default paths of the per-process KSM statistics of the calling process.
const (
	// DefaultProcStat is /proc/self/ksm_stat (Linux 6.1+).
	DefaultProcStat = "/proc/self/ksm_stat"
	// DefaultSmaps is /proc/self/smaps, whose per-VMA "KSM:" line counts merged bytes.
	DefaultSmaps = "/proc/self/smaps"
	// DefaultMeminfo is /proc/meminfo, read for AnonPages when nothing is registered.
	DefaultMeminfo = "/proc/meminfo"
)

// counterNames are the read-only files under DefaultRoot that Counters holds.
var counterNames = []string{
	"pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
	"pages_scanned", "pages_skipped", "full_scans", "general_profit",
	"ksm_zero_pages", "stable_node_chains", "stable_node_dups",
}

// Counters are KSM's host-wide counters (Documentation/admin-guide/mm/ksm.rst,
// "KSM daemon sysfs interface" and "Monitoring KSM profit"). A counter that the
// running kernel lacks reads as 0. They are updated by ksmd only, so they lag
// behind unmaps; use MappingKSMBytes for an immediate per-mapping figure.
type Counters struct {
	PagesShared      int64 `json:"pages_shared"`       // KSM pages in the stable tree
	PagesSharing     int64 `json:"pages_sharing"`      // further sites sharing them: the saving
	PagesUnshared    int64 `json:"pages_unshared"`     // unique pages checked repeatedly
	PagesVolatile    int64 `json:"pages_volatile"`     // pages changing too fast to merge
	PagesScanned     int64 `json:"pages_scanned"`      // pages scanned since boot
	PagesSkipped     int64 `json:"pages_skipped"`      // pages skipped by smart_scan
	FullScans        int64 `json:"full_scans"`         // completed scans of all mergeable memory
	GeneralProfit    int64 `json:"general_profit"`     // bytes saved minus rmap_item overhead; may be negative
	KSMZeroPages     int64 `json:"ksm_zero_pages"`     // empty pages mapped to the zero page
	StableNodeChains int64 `json:"stable_node_chains"` // chains beyond max_page_sharing
	StableNodeDups   int64 `json:"stable_node_dups"`   // duplicated KSM pages in those chains
	// NoGeneralProfit is set when the kernel has no general_profit
	// (before 6.4); progress is then measured by pages_sharing.
	NoGeneralProfit bool `json:"-"`
}

// gain is what a scan that merged something increases: general_profit, or
// pages_sharing on kernels without it.
func (c Counters) gain() int64 {
	if c.NoGeneralProfit {
		return c.PagesSharing
	}
	return c.GeneralProfit
}

func (c *Counters) fields() []*int64 {
	return []*int64{&c.PagesShared, &c.PagesSharing, &c.PagesUnshared, &c.PagesVolatile,
		&c.PagesScanned, &c.PagesSkipped, &c.FullScans, &c.GeneralProfit,
		&c.KSMZeroPages, &c.StableNodeChains, &c.StableNodeDups}
}

// ReadCounters reads Counters from store. Missing counters read as 0; a counter
// that cannot be parsed, or any other read error, is returned.
func ReadCounters(store KnobStore) (Counters, error) {
	var c Counters
	for i, p := range c.fields() {
		v, err := store.Read(counterNames[i])
		if errors.Is(err, fs.ErrNotExist) {
			c.NoGeneralProfit = c.NoGeneralProfit || p == &c.GeneralProfit
			continue
		}
		if err != nil {
			return c, err
		}
		if *p, err = strconv.ParseInt(v, 10, 64); err != nil {
			return c, fmt.Errorf("ksm: counter %s: %w", counterNames[i], err)
		}
	}
	return c, nil
}

// ProcStat is /proc/PID/ksm_stat (Documentation/admin-guide/mm/ksm.rst,
// "Monitoring KSM profit"). Fields absent on the running kernel are zero.
type ProcStat struct {
	RmapItems     int64 `json:"ksm_rmap_items"`
	ZeroPages     int64 `json:"ksm_zero_pages"`
	MergingPages  int64 `json:"ksm_merging_pages"`
	ProcessProfit int64 `json:"ksm_process_profit"`
	MergeAny      bool  `json:"ksm_merge_any"` // prctl(PR_SET_MEMORY_MERGE) is on
	Mergeable     bool  `json:"ksm_mergeable"` // some VMA is VM_MERGEABLE
}

// ReadProcStat parses a ksm_stat file such as DefaultProcStat or /proc/PID/ksm_stat.
func ReadProcStat(path string) (ProcStat, error) {
	var s ProcStat
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("ksm: %w", err)
	}
	ints := map[string]*int64{"ksm_rmap_items": &s.RmapItems, "ksm_zero_pages": &s.ZeroPages,
		"ksm_merging_pages": &s.MergingPages, "ksm_process_profit": &s.ProcessProfit}
	bools := map[string]*bool{"ksm_merge_any": &s.MergeAny, "ksm_mergeable": &s.Mergeable}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		k, v = strings.TrimSuffix(k, ":"), strings.TrimSpace(v)
		if p := ints[k]; p != nil {
			if *p, err = strconv.ParseInt(v, 10, 64); err != nil {
				return s, fmt.Errorf("ksm: %s %s: %w", path, k, err)
			}
		} else if p := bools[k]; p != nil {
			*p = v == "yes"
		}
	}
	return s, nil
}

// MappingKSMBytes returns the merged bytes of the mapping [base, base+length) from
// an smaps file such as DefaultSmaps: the sum of the "KSM:" lines of the VMAs that
// overlap the range. The kernel may merge adjacent anonymous mappings with equal
// flags into one VMA; such a VMA's KSM bytes are prorated by the overlap, so the
// figure is exact only when the mapping is a whole number of VMAs.
func MappingKSMBytes(smapsPath string, base, length uintptr) (int64, error) {
	f, err := os.Open(smapsPath)
	if err != nil {
		return 0, fmt.Errorf("ksm: %w", err)
	}
	defer f.Close()
	return sumSmapsKSM(f, uint64(base), uint64(base)+uint64(length))
}

func sumSmapsKSM(r io.Reader, lo, hi uint64) (int64, error) {
	var total, overlap, size uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if start, end, ok := parseVMAHeader(line); ok {
			overlap, size = rangeOverlap(start, end, lo, hi), end-start
			continue
		}
		rest, ok := strings.CutPrefix(line, "KSM:")
		if !ok || overlap == 0 {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("ksm: smaps %q: %w", line, err)
		}
		total += scaled(kb*1024, overlap, size)
	}
	return int64(total), sc.Err()
}

// scaled returns v*num/den without overflowing the product (num <= den):
// a mapping of 4 GiB or more overflowed 64 bits.
func scaled(v, num, den uint64) uint64 {
	hi, lo := bits.Mul64(v, num)
	q, _ := bits.Div64(hi, lo, den) // hi < den since num <= den
	return q
}

func rangeOverlap(start, end, lo, hi uint64) uint64 {
	a, b := max(start, lo), min(end, hi)
	if b <= a {
		return 0
	}
	return b - a
}

// parseVMAHeader parses "start-end perms ..." lines of smaps.
func parseVMAHeader(line string) (start, end uint64, ok bool) {
	rng, _, found := strings.Cut(line, " ")
	if !found {
		return 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseUint(a, 16, 64)
	end, err2 := strconv.ParseUint(b, 16, 64)
	return start, end, err1 == nil && err2 == nil && end > start
}

// AnonBytes returns AnonPages from a meminfo file such as DefaultMeminfo, in bytes.
func AnonBytes(meminfoPath string) (int64, error) {
	b, err := os.ReadFile(meminfoPath)
	if err != nil {
		return 0, fmt.Errorf("ksm: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "AnonPages:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("ksm: meminfo AnonPages: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("ksm: %s has no AnonPages", meminfoPath)
}
