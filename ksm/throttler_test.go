package ksm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	testharness "github.com/nbdd/nbdd/internal/harness"
)

const gib = 1 << 30

// harness runs a Throttler on a Fake inside a synctest bubble.
type harness struct {
	t     *testing.T
	fake  *Fake
	th    *Throttler
	logs  *testharness.SyncBuffer
	state string // state file path
	stop  context.CancelFunc
	errc  chan error
	once  sync.Once
	err   error
}

func newHarness(t *testing.T, fake *Fake, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, fake: fake, logs: &testharness.SyncBuffer{}, errc: make(chan error, 1)}
	if cfg.StateFile == "" {
		cfg.StateFile = filepath.Join(t.TempDir(), "ksm.snapshot")
	}
	h.state = cfg.StateFile
	cfg.Store, cfg.PageSize = fake, 4096
	cfg.MeminfoPath = filepath.Join(t.TempDir(), "no-meminfo")
	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	th, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.th = th
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.errc <- h.th.Run(ctx) }()
	h.t.Cleanup(func() { h.shutdown() }) // also after t.Fatal: no goroutine outlives the bubble
	synctest.Wait()
}

// shutdown cancels Run and returns its error; it may be called again.
func (h *harness) shutdown() error {
	h.once.Do(func() {
		h.stop()
		h.err = <-h.errc
	})
	return h.err
}

// advance lets d of fake time pass and the throttler settle.
func (h *harness) advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func (h *harness) wantState(want State) {
	h.t.Helper()
	if got := h.th.State(); got != want {
		h.t.Fatalf("at %v: state %v; want %v", time.Now().Format("15:04:05.000"), got, want)
	}
}

func (h *harness) wantKnobs(want map[string]string) {
	h.t.Helper()
	for k, v := range want {
		if got, _ := h.fake.Read(k); got != v {
			h.t.Errorf("%s = %q; want %q", k, got, v)
		}
	}
}

func (h *harness) wantStateFile(exists bool) {
	h.t.Helper()
	_, err := os.Stat(h.state)
	if got := err == nil; got != exists {
		h.t.Errorf("state file exists = %v; want %v (err %v)", got, exists, err)
	}
}

var original = map[string]string{
	KnobRun: "0", KnobPagesToScan: "100", KnobSleepMillisecs: "20", KnobAdvisorMode: AdvisorNone,
	KnobAdvisorMaxCPU: "70", KnobAdvisorTargetScanTime: "200",
}

// 1 GiB mergeable = 262144 pages: /10, /100, /500.
var (
	aggressiveKnobs = map[string]string{KnobRun: "1", KnobPagesToScan: "26214", KnobSleepMillisecs: "1"}
	standardKnobs   = map[string]string{KnobRun: "1", KnobPagesToScan: "2621", KnobSleepMillisecs: "10"}
	slowKnobs       = map[string]string{KnobRun: "1", KnobPagesToScan: "524", KnobSleepMillisecs: "100"}
)

func TestTimeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, NewFake(), Config{})
		h.start()
		h.advance(10 * time.Minute) // no phantom walk at start-up (Kata quirk)
		if w := h.fake.Writes(); len(w) != 0 {
			t.Fatalf("writes before the first kick: %v", w)
		}
		h.wantState(Idle)
		h.wantStateFile(false)

		h.th.ExportOpened("a", gib)
		synctest.Wait()
		h.wantState(Aggressive)
		h.wantKnobs(aggressiveKnobs)
		h.wantStateFile(true)

		steps := []struct {
			d     time.Duration
			state State
			knobs map[string]string
		}{
			{30*time.Second - time.Millisecond, Aggressive, aggressiveKnobs},
			{time.Millisecond, Standard, standardKnobs},
			{120*time.Second - time.Millisecond, Standard, standardKnobs},
			{time.Millisecond, Slow, slowKnobs},
			{120*time.Second - time.Millisecond, Slow, slowKnobs},
			{time.Millisecond, Idle, original},
		}
		for _, s := range steps {
			h.advance(s.d)
			h.wantState(s.state)
			h.wantKnobs(s.knobs)
		}
		h.wantStateFile(false)
		n := len(h.fake.Writes())
		h.advance(time.Hour)
		if err := h.shutdown(); err != nil {
			t.Fatal(err)
		}
		if w := h.fake.Writes(); len(w) != n {
			t.Errorf("writes while idle or at shutdown: %v", w[n:])
		}
	})
}

func TestRekick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, NewFake(), Config{})
		h.start()
		h.th.ExportOpened("a", gib)
		h.advance(20 * time.Second)
		h.th.Kick() // re-arms the 30 s hold
		h.advance(29 * time.Second)
		h.wantState(Aggressive)
		h.advance(time.Second)
		h.wantState(Standard)
		h.advance(100 * time.Second)
		h.th.Kick() // from standard back to aggressive
		synctest.Wait()
		h.wantState(Aggressive)
		h.wantKnobs(aggressiveKnobs)
		h.advance(30*time.Second + 240*time.Second)
		h.wantState(Idle)
		h.wantKnobs(original)
		if err := h.shutdown(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConfigurableHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, NewFake(), Config{AggressiveHold: time.Second, StandardHold: 2 * time.Second, SlowHold: 3 * time.Second})
		h.start()
		h.th.Kick()
		synctest.Wait()
		for _, s := range []struct {
			d  time.Duration
			st State
		}{{time.Second, Standard}, {2 * time.Second, Slow}, {3 * time.Second, Idle}} {
			h.advance(s.d)
			h.wantState(s.st)
		}
		h.shutdown()
	})
}

func TestKickBytesAndFloor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, NewFake(), Config{MaxPagesToScan: 5000})
		h.start()
		h.th.Kick() // nothing registered and no meminfo: the floor
		synctest.Wait()
		h.wantKnobs(map[string]string{KnobPagesToScan: "100"})
		h.th.Send(Event{Kind: EventKick, Name: "img", Bytes: 400 << 20}) // 102400 pages / 10
		synctest.Wait()
		h.wantKnobs(map[string]string{KnobPagesToScan: "5000"}) // capped
		h.shutdown()
	})
}

func TestExportClosedLowersRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, NewFake(), Config{})
		h.start()
		h.th.ExportOpened("a", gib)
		h.th.ExportOpened("b", gib)
		synctest.Wait()
		h.wantKnobs(map[string]string{KnobPagesToScan: "30000"}) // 52428 capped
		h.th.ExportClosed("b")
		synctest.Wait()
		h.wantState(Aggressive)
		h.wantKnobs(aggressiveKnobs)
		h.th.ExportOpened("empty", 0) // no kick for an empty export
		h.advance(30 * time.Second)
		h.wantState(Standard)
		h.shutdown()
	})
}

func TestEarlyDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		f.SetCounter("full_scans", 10)
		h := newHarness(t, f, Config{})
		h.start()
		h.th.ExportOpened("a", gib)
		synctest.Wait()
		scan := func(scans, profit int64) {
			f.SetCounter("full_scans", scans)
			f.SetCounter("general_profit", profit)
			h.advance(time.Second)
		}
		scan(11, -100) // first boundary: the reference
		scan(12, 0)
		scan(13, 4096) // rose over two scans: new reference
		h.wantState(Aggressive)
		scan(14, 8192)
		scan(15, 4096) // not above 4096 two scans later: drop
		h.wantState(Standard)
		if !bytes.Contains([]byte(h.logs.String()), []byte(`why="profit flat"`)) {
			t.Errorf("no early-drop log:\n%s", h.logs.String())
		}
		h.wantKnobs(standardKnobs)
		// Without new full scans, the standard hold runs its full course.
		h.advance(119 * time.Second)
		h.wantState(Standard)
		h.advance(time.Second)
		h.wantState(Slow)
		h.shutdown()
	})
}

func TestEarlyDropFromSlowRestores(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		h := newHarness(t, f, Config{AggressiveHold: time.Second, StandardHold: time.Second})
		h.start()
		h.th.Kick()
		h.advance(2 * time.Second)
		h.wantState(Slow)
		for _, n := range []int64{1, 2, 3} {
			f.SetCounter("full_scans", n)
			h.advance(time.Second)
		}
		h.wantState(Idle)
		h.wantKnobs(original)
		h.wantStateFile(false)
		h.shutdown()
	})
}

// indexOf returns the position of the first write of knob in ws, or -1.
func indexOf(ws []Write, knob string) int {
	return slices.IndexFunc(ws, func(w Write) bool { return w.Name == knob })
}

func TestWriteAndRestoreOrder(t *testing.T) {
	for _, p := range []Policy{PolicyRate, PolicyAdvisor} {
		t.Run(p.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := NewFake()
				h := newHarness(t, f, Config{Policy: p})
				h.start()
				h.th.ExportOpened("a", gib)
				synctest.Wait()
				checkOrder(t, "tune", f.Writes(), "1")
				if p == PolicyAdvisor {
					h.wantKnobs(map[string]string{KnobAdvisorMode: AdvisorScanTime, KnobAdvisorTargetScanTime: "1", KnobPagesToScan: "500"})
				}
				f.ResetWrites()
				if err := h.shutdown(); err != nil {
					t.Fatal(err)
				}
				checkOrder(t, "restore", f.Writes(), "0")
				h.wantKnobs(original)
				h.wantStateFile(false)
			})
		})
	}
}

// checkOrder: advisor_mode before the other knobs, run last with value run.
func checkOrder(t *testing.T, what string, ws []Write, run string) {
	t.Helper()
	if len(ws) == 0 || ws[len(ws)-1] != (Write{KnobRun, run}) {
		t.Fatalf("%s: writes %v; want run=%s last", what, ws, run)
	}
	for _, w := range ws {
		if w.Name == KnobRun && w.Value == "2" {
			t.Fatalf("%s: run=2 written", what)
		}
		if w.Name == KnobMergeAcrossNodes || w.Name == KnobMaxPageSharing {
			t.Fatalf("%s: %s written", what, w.Name)
		}
	}
	if i := indexOf(ws, KnobAdvisorMode); i > 0 {
		t.Fatalf("%s: writes %v; want advisor_mode first", what, ws)
	}
	if i, j := indexOf(ws, KnobPagesToScan), indexOf(ws, KnobSleepMillisecs); i >= 0 && j >= 0 && i > j {
		t.Fatalf("%s: writes %v; want pages_to_scan before sleep_millisecs", what, ws)
	}
}

// A host that runs the scan-time advisor itself: the rate policy switches it
// off, and restoring it must not write pages_to_scan (EINVAL in scan-time mode).
func TestRestoreScanTimeHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		f.Write(KnobAdvisorMode, AdvisorScanTime)
		h := newHarness(t, f, Config{})
		h.start()
		h.th.ExportOpened("a", gib)
		synctest.Wait()
		h.wantKnobs(map[string]string{KnobAdvisorMode: AdvisorNone, KnobPagesToScan: "26214"})
		if err := h.shutdown(); err != nil {
			t.Fatalf("restore: %v", err)
		}
		h.wantKnobs(map[string]string{KnobAdvisorMode: AdvisorScanTime, KnobPagesToScan: "500", KnobRun: "0", KnobSleepMillisecs: "20"})
	})
}

func TestNoAdvisorKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		for _, k := range []string{KnobAdvisorMode, KnobAdvisorMaxCPU, KnobAdvisorTargetScanTime} {
			f.Remove(k)
		}
		h := newHarness(t, f, Config{Policy: PolicyAdvisor}) // falls back to rate
		h.start()
		h.th.ExportOpened("a", gib)
		synctest.Wait()
		h.wantKnobs(aggressiveKnobs)
		if err := h.shutdown(); err != nil {
			t.Fatal(err)
		}
		h.wantKnobs(map[string]string{KnobRun: "0", KnobPagesToScan: "100", KnobSleepMillisecs: "20"})
		if s := h.th.Status(); s.Policy != PolicyRate {
			t.Errorf("policy %v; want rate", s.Policy)
		}
	})
}

func TestStateFileRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A previous nbdd tuned the knobs and was killed: its state file remains.
		f := NewFake()
		h := newHarness(t, f, Config{})
		if err := saveSnapshot(h.state, Snapshot(original), time.Now()); err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{KnobRun: "1", KnobPagesToScan: "26214", KnobSleepMillisecs: "1"} {
			f.Write(k, v)
		}
		h.start()
		h.wantKnobs(original) // restored from the file, not snapshotted as tuned
		h.wantStateFile(false)
		h.wantState(Idle)

		h.th.Kick()
		synctest.Wait()
		h.wantStateFile(true)
		got, err := loadSnapshot(h.state)
		if err != nil || got[KnobRun] != "0" || got[KnobPagesToScan] != "100" {
			t.Fatalf("state file while tuned = %v, %v; want the original values", got, err)
		}
		if err := h.shutdown(); err != nil {
			t.Fatal(err)
		}
		h.wantKnobs(original)
		h.wantStateFile(false)
	})
}

func TestStateFileUnwritable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "f")
		os.WriteFile(file, nil, 0o644)
		h := newHarness(t, NewFake(), Config{StateFile: filepath.Join(file, "ksm.snapshot")})
		h.start()
		h.th.Kick()
		synctest.Wait()
		h.wantKnobs(original) // no snapshot on disk: no tuning
		if w := h.fake.Writes(); len(w) != 0 {
			t.Errorf("writes without a persisted snapshot: %v", w)
		}
		h.shutdown()
	})
}

// TestForeignChange: a knob another tuner changed is noticed, whether by
// the next poll or by a kick that comes first (which must not overwrite
// it), and left to that tuner for good.
func TestForeignChange(t *testing.T) {
	for _, kick := range []bool{false, true} {
		t.Run(fmt.Sprintf("kick=%v", kick), func(t *testing.T) { testForeignChange(t, kick) })
	}
}

func testForeignChange(t *testing.T, kick bool) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		h := newHarness(t, f, Config{})
		h.start()
		h.th.ExportOpened("a", gib)
		synctest.Wait()
		f.Set(KnobSleepMillisecs, "42") // another tuner
		if kick {
			h.th.Kick() // before the next poll
			synctest.Wait()
			if v, _ := f.Read(KnobSleepMillisecs); v != "42" {
				t.Fatalf("sleep_millisecs = %s after a kick; the other tuner's 42 was overwritten", v)
			}
		}
		h.advance(time.Second)
		if s := h.th.Status(); !slices.Equal(s.Unmanaged, []string{KnobSleepMillisecs}) {
			t.Fatalf("unmanaged = %v; want [sleep_millisecs]", s.Unmanaged)
		}
		if !bytes.Contains([]byte(h.logs.String()), []byte("no longer managing")) {
			t.Errorf("no log of the foreign change:\n%s", h.logs.String())
		}
		if snap, _ := loadSnapshot(h.state); snap[KnobSleepMillisecs] != "" {
			t.Errorf("state file still holds sleep_millisecs: %v", snap)
		}
		h.advance(30 * time.Second)
		h.wantState(Standard)
		h.wantKnobs(map[string]string{KnobSleepMillisecs: "42", KnobPagesToScan: "2621"})
		if err := h.shutdown(); err != nil {
			t.Fatal(err)
		}
		h.wantKnobs(map[string]string{KnobSleepMillisecs: "42", KnobPagesToScan: "100", KnobRun: "0"})
	})
}

func TestRestoreErrorKeepsStateFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		h := newHarness(t, f, Config{})
		h.start()
		h.th.Kick()
		synctest.Wait()
		f.Remove(KnobSleepMillisecs) // writes fail with ENOENT now
		err := h.shutdown()
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("shutdown = %v; want ENOENT", err)
		}
		h.wantStateFile(true)
		h.wantKnobs(map[string]string{KnobRun: "0", KnobPagesToScan: "100"})
	})
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, NewFake(), Config{})
		h.start()
		if err := h.th.Run(context.Background()); err == nil {
			t.Error("second Run succeeded")
		}
		h.shutdown()
		h.th.Kick() // after Run: dropped, must not block
	})
}

func TestStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		f.SetCounter("pages_sharing", 7)
		h := newHarness(t, f, Config{SmapsPath: writeTemp(t, smapsSample), ProcStatPath: writeTemp(t, procStatSample)})
		h.start()
		h.th.ExportOpened("b", 8192)
		h.th.ExportOpened("a", 4096)
		h.th.RegisterMapping("a", 0x7f0000000000, 0x4000)
		synctest.Wait()
		s := h.th.Status()
		if !s.Running || s.State != Aggressive || s.Counters.PagesSharing != 7 || s.Knobs[KnobRun] != "1" ||
			s.Snapshot[KnobRun] != "0" || s.Process == nil || s.Process.MergingPages != 8192 {
			t.Errorf("status = %+v", s)
		}
		want := []ExportStatus{{Name: "a", Bytes: 4096, Base: 0x7f0000000000, Length: 0x4000, MergedBytes: 12 << 10}, {Name: "b", Bytes: 8192}}
		if !slices.Equal(s.Exports, want) {
			t.Errorf("exports = %+v; want %+v", s.Exports, want)
		}
		var b bytes.Buffer
		if err := s.Print(&b); err != nil || !bytes.Contains(b.Bytes(), []byte("export a: 4096 bytes, 12288 merged")) {
			t.Errorf("Print: %v\n%s", err, b.String())
		}
		h.th.ExportClosed("a")
		h.th.ExportClosed("b")
		synctest.Wait()
		if s := h.th.Status(); len(s.Exports) != 0 {
			t.Errorf("exports after close: %+v", s.Exports)
		}
		h.shutdown()
	})
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, c := range []Config{{AggressiveHold: -1}, {MinPagesToScan: 10, MaxPagesToScan: 5}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
}
