package ksm

import (
	"fmt"
	"strconv"
	"time"
)

// State is the throttler's level. The cycle is Idle → Aggressive → Standard →
// Slow → Idle; a kick jumps to Aggressive from any state.
type State int

// The throttler's states, from Kata's ksm-throttler (ksm.go, ksmSettings).
const (
	// Idle: the host's own settings are in force; nothing is written.
	Idle State = iota
	// Aggressive scans the mergeable memory quickly after a kick.
	Aggressive
	// Standard scans at a moderate pace.
	Standard
	// Slow scans slowly before the host's settings are restored.
	Slow
	numStates
)

var stateNames = [numStates]string{"idle", "aggressive", "standard", "slow"}

// String returns the state's lower-case name.
func (s State) String() string {
	if s < 0 || s >= numStates {
		return "State(" + strconv.Itoa(int(s)) + ")"
	}
	return stateNames[s]
}

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("ksm: unknown state %q", b)
}

// Policy selects how a level is turned into knob values.
type Policy int

const (
	// PolicyRate sets pages_to_scan from the bytes marked mergeable and a
	// per-level factor, and sleep_millisecs per level (advisor_mode=none).
	PolicyRate Policy = iota
	// PolicyAdvisor lets the kernel's scan-time advisor (Linux 6.8) size
	// pages_to_scan, and sets advisor_target_scan_time and advisor_max_cpu per
	// level. Without advisor_mode the Throttler falls back to PolicyRate.
	PolicyAdvisor
)

// String returns "rate" or "advisor".
func (p Policy) String() string {
	switch p {
	case PolicyRate:
		return "rate"
	case PolicyAdvisor:
		return "advisor"
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (p Policy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; see ParsePolicy.
func (p *Policy) UnmarshalText(b []byte) error {
	v, err := ParsePolicy(string(b))
	*p = v
	return err
}

// ParsePolicy parses "rate" (or "") and "advisor", for command-line flags.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "", "rate":
		return PolicyRate, nil
	case "advisor", "scan-time":
		return PolicyAdvisor, nil
	}
	return PolicyRate, fmt.Errorf("ksm: unknown policy %q (want rate or advisor)", s)
}

// level is one row of the throttling table, in the style of Kata's
// ksmThrottleIntervals: how long to stay, where to go next, and the knobs.
type level struct {
	// Hold is how long the level lasts unless a kick or an early drop ends it.
	Hold time.Duration
	// Next is the level that follows.
	Next State
	// PagesFactor (PolicyRate): pages_to_scan = mergeable pages / PagesFactor,
	// clamped to [Config.MinPagesToScan, Config.MaxPagesToScan].
	PagesFactor int64
	// SleepMillisecs is written to sleep_millisecs.
	SleepMillisecs int
	// TargetScanTime (PolicyAdvisor) is written to advisor_target_scan_time, in seconds.
	TargetScanTime int
	// MaxCPU (PolicyAdvisor) is written to advisor_max_cpu, in percent.
	MaxCPU int
}

// Default hold times: Kata's 30 s, 2 min, 2 min ("30s / 2mn / 2mn").
const (
	DefaultAggressiveHold = 30 * time.Second
	DefaultStandardHold   = 120 * time.Second
	DefaultSlowHold       = 120 * time.Second
)

// defaultLevels returns the level table, indexed by State, with the default holds.
// The rate factors and sleeps are Kata's (1 page in 10 every 1 ms, 1 in 100 every
// 10 ms, 1 in 500 every 100 ms) applied to mergeable rather than all anonymous pages.
func defaultLevels() [numStates]level {
	return [numStates]level{
		Idle:       {Next: Idle},
		Aggressive: {Hold: DefaultAggressiveHold, Next: Standard, PagesFactor: 10, SleepMillisecs: 1, TargetScanTime: 1, MaxCPU: 70},
		Standard:   {Hold: DefaultStandardHold, Next: Slow, PagesFactor: 100, SleepMillisecs: 10, TargetScanTime: 30, MaxCPU: 20},
		Slow:       {Hold: DefaultSlowHold, Next: Idle, PagesFactor: 500, SleepMillisecs: 100, TargetScanTime: 200, MaxCPU: 5},
	}
}

// machine is the pure state machine: it takes times and counters, writes nothing.
type machine struct {
	levels   [numStates]level
	state    State
	deadline time.Time // end of the current hold; zero in Idle
	entry    int64     // full_scans on entering the level
	ref      profitRef
}

// profitRef is the gain (general_profit, see Counters.gain) seen at a
// full-scan boundary.
type profitRef struct {
	set           bool
	scans, profit int64
}

// kick enters Aggressive, whatever the state.
func (m *machine) kick(now time.Time, c Counters) { m.enter(Aggressive, now, c) }

func (m *machine) enter(s State, now time.Time, c Counters) {
	m.state, m.deadline, m.entry, m.ref = s, time.Time{}, c.FullScans, profitRef{}
	if s != Idle {
		m.deadline = now.Add(m.levels[s].Hold)
	}
}

// step advances the machine at a poll; it returns why the state changed
// ("hold expired" or "profit flat"), or "" if it did not.
// A level ends when its hold expires or when general_profit has not risen over
// two full scans, counted from the first scan boundary after entering the level
// (pages registered mid-scan need one scan for checksums and one to merge).
func (m *machine) step(now time.Time, c Counters) string {
	why := ""
	switch {
	case m.state == Idle:
		return ""
	case !now.Before(m.deadline):
		why = "hold expired"
	case m.stalled(c):
		why = "profit flat"
	default:
		return ""
	}
	m.enter(m.levels[m.state].Next, now, c)
	return why
}

func (m *machine) stalled(c Counters) bool {
	switch {
	case !m.ref.set:
		if c.FullScans != m.entry {
			m.ref = profitRef{true, c.FullScans, c.gain()}
		}
	case c.FullScans < m.ref.scans: // run=2 by someone else reset the counter
		m.ref = profitRef{true, c.FullScans, c.gain()}
	case c.FullScans-m.ref.scans >= 2:
		if c.gain() <= m.ref.profit {
			return true
		}
		m.ref = profitRef{true, c.FullScans, c.gain()}
	}
	return false
}

// wait returns how long until the current hold ends (0 in Idle).
func (m *machine) wait(now time.Time) time.Duration {
	if m.state == Idle {
		return 0
	}
	return max(0, m.deadline.Sub(now))
}

// target returns the knob writes for level s, in write order: advisor_mode first,
// then the advisor knobs, pages_to_scan, sleep_millisecs, and run=1 last.
// hasAdvisor says whether the kernel has advisor_mode.
func target(l level, p Policy, hasAdvisor bool, pages int64) []Write {
	var w []Write
	if hasAdvisor {
		mode := AdvisorNone
		if p == PolicyAdvisor {
			mode = AdvisorScanTime
		}
		w = append(w, Write{KnobAdvisorMode, mode})
	}
	if p == PolicyAdvisor && hasAdvisor {
		w = append(w, Write{KnobAdvisorMaxCPU, strconv.Itoa(l.MaxCPU)},
			Write{KnobAdvisorTargetScanTime, strconv.Itoa(l.TargetScanTime)})
	} else {
		w = append(w, Write{KnobPagesToScan, strconv.FormatInt(pages, 10)})
	}
	return append(w, Write{KnobSleepMillisecs, strconv.Itoa(l.SleepMillisecs)}, Write{KnobRun, "1"})
}

// pagesToScan divides the mergeable pages by the level's factor and clamps.
func pagesToScan(mergeableBytes, pageSize, factor, floor, ceil int64) int64 {
	if factor <= 0 {
		factor = 1
	}
	return min(max(mergeableBytes/pageSize/factor, floor), ceil)
}
