package ksm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// EventKind says what an Event reports.
type EventKind int

const (
	// EventKick asks for aggressive scanning (socket "kick", inotify, SIGUSR1).
	// Bytes, if known, is the size of what appeared (an image file).
	EventKick EventKind = iota
	// EventExportOpened reports an export of Bytes mergeable bytes; it kicks
	// unless Bytes is 0, and its size counts towards pages_to_scan.
	EventExportOpened
	// EventExportClosed reports that the export Name is gone; it does not kick.
	EventExportClosed
)

// String returns "kick", "export-opened" or "export-closed".
func (k EventKind) String() string {
	switch k {
	case EventKick:
		return "kick"
	case EventExportOpened:
		return "export-opened"
	case EventExportClosed:
		return "export-closed"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event is what every event source sends to the Throttler's single channel.
type Event struct {
	Kind  EventKind
	Name  string // export name, file name or kick reason
	Bytes int64  // size in bytes, 0 if unknown
}

// Config configures a Throttler. The zero value manages DefaultRoot with
// PolicyRate, Kata's hold times and DefaultStateFile.
type Config struct {
	// Store holds the knobs; nil means Dir{} (DefaultRoot).
	Store KnobStore
	// Clock is the time source; nil means SystemClock.
	Clock Clock
	// Logger receives the throttler's logs; nil means slog.Default().
	Logger *slog.Logger
	// StateFile persists the snapshot while knobs are tuned; "" means DefaultStateFile.
	StateFile string
	// Policy selects PolicyRate (default) or PolicyAdvisor.
	Policy Policy
	// AggressiveHold, StandardHold and SlowHold override the defaults
	// (30 s, 120 s, 120 s) when non-zero.
	AggressiveHold, StandardHold, SlowHold time.Duration
	// PollInterval is how often counters are read while tuned; 0 means 1 s.
	PollInterval time.Duration
	// MinPagesToScan and MaxPagesToScan clamp PolicyRate's pages_to_scan;
	// 0 means 100 (the kernel default) and 30000 (advisor_max_pages_to_scan's default).
	MinPagesToScan, MaxPagesToScan int64
	// PageSize is the page size in bytes; 0 means os.Getpagesize().
	PageSize int64
	// MeminfoPath is read for AnonPages when no mergeable bytes are known; "" means DefaultMeminfo.
	MeminfoPath string
	// SmapsPath is read for per-export merged bytes; "" means DefaultSmaps.
	SmapsPath string
	// ProcStatPath is this process's ksm_stat; "" means DefaultProcStat.
	ProcStatPath string
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

type exportInfo struct {
	bytes        int64
	base, length uintptr
}

// Throttler tunes KSM after kicks and restores the host's settings afterwards.
// Create it with New, start Run in a goroutine, and feed it events with Kick,
// ExportOpened, ExportClosed or Send from any goroutine.
type Throttler struct {
	store              KnobStore
	clock              Clock
	log                *slog.Logger
	policy             Policy // written under mu by Run (fallback), read by Status
	stateFile          string
	poll               time.Duration
	minPages, maxPages int64
	pageSize           int64
	meminfo, smaps     string
	procStat           string

	events  chan Event
	done    chan struct{} // closed when Run returns
	running atomic.Bool

	// Owned by the Run goroutine.
	m          machine
	hasAdvisor bool
	expected   map[string]string // what we last wrote, read back; nil while idle
	kickBytes  int64             // bytes announced by kicks since leaving Idle
	counters   Counters          // last good read

	mu      sync.Mutex // guards the fields below
	state   State
	since   time.Time
	snap    Snapshot // original values while tuned (or while a restore failed)
	foreign map[string]bool
	exports map[string]*exportInfo
}

// New returns a Throttler for cfg. It reads nothing until Run.
func New(cfg Config) (*Throttler, error) {
	if cfg.AggressiveHold < 0 || cfg.StandardHold < 0 || cfg.SlowHold < 0 || cfg.PollInterval < 0 ||
		cfg.MinPagesToScan < 0 || cfg.MaxPagesToScan < 0 || cfg.PageSize < 0 {
		return nil, errors.New("ksm: negative value in Config")
	}
	t := &Throttler{
		store: orDefault[KnobStore](cfg.Store, Dir{}), clock: orDefault[Clock](cfg.Clock, SystemClock{}),
		log: orDefault(cfg.Logger, slog.Default()), policy: cfg.Policy,
		stateFile: orDefault(cfg.StateFile, DefaultStateFile), poll: orDefault(cfg.PollInterval, time.Second),
		minPages: orDefault(cfg.MinPagesToScan, 100), maxPages: orDefault(cfg.MaxPagesToScan, 30000),
		pageSize: orDefault(cfg.PageSize, int64(os.Getpagesize())),
		meminfo:  orDefault(cfg.MeminfoPath, DefaultMeminfo), smaps: orDefault(cfg.SmapsPath, DefaultSmaps),
		procStat: orDefault(cfg.ProcStatPath, DefaultProcStat),
		events:   make(chan Event, 256), done: make(chan struct{}),
		foreign: map[string]bool{}, exports: map[string]*exportInfo{},
	}
	if t.minPages > t.maxPages {
		return nil, fmt.Errorf("ksm: MinPagesToScan %d > MaxPagesToScan %d", t.minPages, t.maxPages)
	}
	t.m.levels = defaultLevels()
	for s, h := range map[State]time.Duration{Aggressive: cfg.AggressiveHold, Standard: cfg.StandardHold, Slow: cfg.SlowHold} {
		t.m.levels[s].Hold = orDefault(h, t.m.levels[s].Hold)
	}
	return t, nil
}

// Kick asks for aggressive scanning now; it re-arms the aggressive hold.
func (t *Throttler) Kick() { t.Send(Event{Kind: EventKick}) }

// ExportOpened registers an export of size bytes whose memory is marked
// mergeable, and kicks: the new size raises pages_to_scan proportionally.
func (t *Throttler) ExportOpened(name string, bytes int64) {
	t.Send(Event{Kind: EventExportOpened, Name: name, Bytes: bytes})
}

// ExportClosed unregisters the export name (and its mapping). It does not kick.
func (t *Throttler) ExportClosed(name string) {
	t.Send(Event{Kind: EventExportClosed, Name: name})
}

// RegisterMapping records where the export name's mergeable mapping lives, so
// that Status reports its merged bytes (from smaps). ExportClosed forgets it.
func (t *Throttler) RegisterMapping(name string, base, length uintptr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.exports[name]
	if e == nil {
		e = &exportInfo{}
		t.exports[name] = e
	}
	e.base, e.length = base, length
}

// Send queues ev for Run. Export events update the registry at once, so that
// Status sees them. Send blocks only while 256 events are queued and Run has
// not returned; after Run returns it drops the event.
func (t *Throttler) Send(ev Event) {
	t.register(ev)
	select {
	case t.events <- ev:
	case <-t.done:
	}
}

func (t *Throttler) register(ev Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch ev.Kind {
	case EventExportOpened:
		e := t.exports[ev.Name]
		if e == nil {
			e = &exportInfo{}
			t.exports[ev.Name] = e
		}
		e.bytes = ev.Bytes
	case EventExportClosed:
		delete(t.exports, ev.Name)
	}
}

// State returns the current level.
func (t *Throttler) State() State {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

// Run recovers the knobs from a state file left by a crashed run, then applies
// the policy to the events until ctx is done, and finally restores the original
// knob values if it had changed them. It returns the restore errors, if any.
// Run may be called only once.
func (t *Throttler) Run(ctx context.Context) error {
	if !t.running.CompareAndSwap(false, true) {
		return errors.New("ksm: Run called twice")
	}
	defer close(t.done)
	t.recover()
	t.hasAdvisor = Exists(t.store, KnobAdvisorMode)
	if t.policy == PolicyAdvisor && !t.hasAdvisor {
		t.log.Warn("ksm: kernel has no scan-time advisor; using the rate policy")
		t.mu.Lock()
		t.policy = PolicyRate
		t.mu.Unlock()
	}
	t.setState(Idle)
	timer := t.clock.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return t.deactivate("shutdown")
		case ev := <-t.events:
			t.handle(ev)
		case <-timer.C():
			t.tick()
		}
		t.arm(timer)
	}
}

// arm sets the timer for the next poll or hold expiry; Idle needs no timer.
func (t *Throttler) arm(timer Timer) {
	timer.Stop()
	if t.m.state != Idle {
		timer.Reset(min(t.poll, t.m.wait(t.clock.Now())))
	}
}

// recover restores the snapshot of a previous run that did not restore it.
func (t *Throttler) recover() {
	snap, err := loadSnapshot(t.stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		t.log.Error("ksm: unreadable state file; not restoring from it", "file", t.stateFile, "err", err)
		return
	}
	t.log.Warn("ksm: restoring the knobs saved by a previous run", "file", t.stateFile, "knobs", snap)
	if err := t.apply(restorePlan(snap)); err != nil {
		t.setSnap(snap) // keep it: Run's next restore retries
		return
	}
	t.removeStateFile()
}

func (t *Throttler) handle(ev Event) {
	t.log.Debug("ksm: event", "kind", ev.Kind, "name", ev.Name, "bytes", ev.Bytes)
	switch ev.Kind {
	case EventKick:
		t.kickBytes = satAdd(t.kickBytes, ev.Bytes)
		t.activate()
	case EventExportOpened:
		if ev.Bytes > 0 {
			t.activate()
		}
	case EventExportClosed:
		// Less mergeable memory: a lower rate. With nothing known left,
		// the rate stays: the fallback basis (AnonPages) would raise it.
		if t.m.state != Idle && t.knownBytes() > 0 {
			t.tune()
		}
	}
}

// satAdd adds two non-negative sizes, saturating instead of wrapping (a
// sparse image may claim exabytes).
func satAdd(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

// activate enters Aggressive, snapshotting the knobs first when leaving Idle.
func (t *Throttler) activate() {
	if t.snapshot() == nil {
		t.log.Error("ksm: cannot snapshot the knobs; not tuning")
		return
	}
	t.readCounters()
	t.m.kick(t.clock.Now(), t.counters)
	t.setState(Aggressive)
	t.tune()
}

// snapshot returns the snapshot to restore, taking and persisting one if none.
func (t *Throttler) snapshot() Snapshot {
	t.mu.Lock()
	snap := t.snap
	t.mu.Unlock()
	if snap != nil {
		return snap
	}
	snap, err := takeSnapshot(t.store)
	if err != nil {
		t.log.Error("ksm: snapshot", "err", err)
		return nil
	}
	for k := range t.foreignKnobs() {
		delete(snap, k)
	}
	if err := saveSnapshot(t.stateFile, snap, t.clock.Now()); err != nil {
		t.log.Error("ksm: cannot persist the snapshot; not tuning", "err", err)
		return nil
	}
	t.setSnap(snap)
	return snap
}

func (t *Throttler) tick() {
	t.readCounters()
	t.detectForeign()
	from := t.m.state
	why := t.m.step(t.clock.Now(), t.counters)
	if why == "" {
		return
	}
	t.log.Info("ksm: level change", "from", from, "to", t.m.state, "why", why,
		"full_scans", t.counters.FullScans, "general_profit", t.counters.GeneralProfit)
	if t.m.state == Idle {
		t.deactivate("decayed")
		return
	}
	t.setState(t.m.state)
	t.tune()
}

// tune writes the current level's knobs and records what the kernel kept.
// Knobs changed by someone else since the last write are found first, so
// a kick between two polls does not overwrite them.
func (t *Throttler) tune() {
	t.detectForeign()
	l := t.m.levels[t.m.state]
	pages := pagesToScan(t.mergeableBytes(), t.pageSize, l.PagesFactor, t.minPages, t.maxPages)
	writes := target(l, t.policy, t.hasAdvisor, pages)
	if err := t.apply(writes); err != nil {
		t.log.Warn("ksm: tuning incomplete", "state", t.m.state, "err", err)
	}
	t.expected = map[string]string{}
	for _, w := range writes {
		if v, err := t.store.Read(w.Name); err == nil && !t.isForeign(w.Name) {
			t.expected[w.Name] = v
		}
	}
}

// deactivate restores the snapshot and returns to Idle. The state file is
// removed only after a clean restore.
func (t *Throttler) deactivate(why string) error {
	t.m.enter(Idle, t.clock.Now(), t.counters)
	t.setState(Idle)
	t.kickBytes = 0
	t.mu.Lock()
	snap := t.snap
	t.mu.Unlock()
	if snap == nil {
		return nil
	}
	t.detectForeign()
	t.expected = nil
	if err := t.apply(restorePlan(t.snapshotNow())); err != nil {
		t.log.Error("ksm: restore incomplete; state file kept", "why", why, "err", err)
		return err
	}
	t.log.Info("ksm: knobs restored", "why", why)
	t.setSnap(nil)
	t.removeStateFile()
	return nil
}

// apply writes ws in order, skipping unmanaged knobs and values already set.
// It goes on after a failed write and returns all the errors.
func (t *Throttler) apply(ws []Write) error {
	var errs []error
	for _, w := range ws {
		if t.isForeign(w.Name) {
			continue
		}
		if cur, err := t.store.Read(w.Name); err == nil && cur == w.Value {
			continue
		}
		if err := t.store.Write(w.Name, w.Value); err != nil {
			t.log.Warn("ksm: write failed", "knob", w.Name, "value", w.Value, "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// detectForeign stops managing every knob whose value is no longer what we
// last wrote: another tuner (ksmtuned, an admin) owns it now.
func (t *Throttler) detectForeign() {
	changed := false
	for k, want := range t.expected {
		if k == KnobPagesToScan && t.expected[KnobAdvisorMode] == AdvisorScanTime {
			continue // the advisor changes it
		}
		cur, err := t.store.Read(k)
		if err != nil || cur == want || t.isForeign(k) {
			continue
		}
		t.log.Warn("ksm: knob changed by someone else; no longer managing it", "knob", k, "wrote", want, "now", cur)
		t.markForeign(k)
		delete(t.expected, k)
		changed = true
	}
	if snap := t.snapshotNow(); changed && snap != nil {
		if err := saveSnapshot(t.stateFile, snap, t.clock.Now()); err != nil {
			t.log.Error("ksm: cannot persist the snapshot", "err", err)
		}
	}
}

func (t *Throttler) removeStateFile() {
	if err := os.Remove(t.stateFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.log.Warn("ksm: cannot remove the state file", "file", t.stateFile, "err", err)
	}
}

func (t *Throttler) readCounters() {
	c, err := ReadCounters(t.store)
	if err != nil {
		t.log.Debug("ksm: counters", "err", err)
		return
	}
	t.counters = c
}

// mergeableBytes is the basis of pages_to_scan: the registered exports plus
// the sizes announced by kicks, or AnonPages when nothing is known.
func (t *Throttler) mergeableBytes() int64 {
	if n := t.knownBytes(); n > 0 {
		return n
	}
	anon, err := AnonBytes(t.meminfo)
	if err != nil {
		t.log.Debug("ksm: no mergeable size known", "err", err)
	}
	return anon
}

// knownBytes is the registered exports plus the sizes announced by kicks.
func (t *Throttler) knownBytes() int64 {
	n := t.kickBytes
	t.mu.Lock()
	for _, e := range t.exports {
		n = satAdd(n, e.bytes)
	}
	t.mu.Unlock()
	return n
}

func (t *Throttler) setState(s State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != s || t.since.IsZero() {
		t.state, t.since = s, t.clock.Now()
	}
}

func (t *Throttler) setSnap(s Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.snap = s
}

// snapshotNow returns the snapshot less the knobs we no longer manage.
func (t *Throttler) snapshotNow() Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.foreign {
		delete(t.snap, k)
	}
	return t.snap
}

func (t *Throttler) isForeign(k string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.foreign[k]
}

func (t *Throttler) markForeign(k string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.foreign[k] = true
}

func (t *Throttler) foreignKnobs() map[string]bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]bool, len(t.foreign))
	for k := range t.foreign {
		m[k] = true
	}
	return m
}
