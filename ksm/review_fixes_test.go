package ksm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestRestoreNeverWritesRun2: run reads 2 after an admin's one-off unmerge;
// restoring that would unmerge every KSM page on the host again, so the
// throttler restores 0, the state the unmerge left.
func TestRestoreNeverWritesRun2(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		if err := f.Write(KnobRun, "2"); err != nil {
			t.Fatal(err)
		}
		h := tunedHarness(t, f)
		f.ResetWrites()
		if err := h.shutdown(); err != nil {
			t.Fatal(err)
		}
		for _, w := range f.Writes() {
			if w == (Write{KnobRun, "2"}) {
				t.Errorf("restore wrote run=2 (unmerge everything): %v", f.Writes())
			}
		}
		if v, _ := f.Read(KnobRun); v != "0" {
			t.Errorf("run after restore = %s; want 0", v)
		}
	})
}

// TestRestorableRun: the run values a snapshot keeps.
func TestRestorableRun(t *testing.T) {
	for in, want := range map[string]string{"0": "0", "1": "1", "2": "0", "4": "0", "5": "1", "6": "0", "x": "x"} {
		if got := restorableRun(in); got != want {
			t.Errorf("restorableRun(%q) = %q; want %q", in, got, want)
		}
	}
}

// TestStateFileAfterForeignRun: once someone else changes run, the state
// file (which then leaves run out) still restores the other knobs after a
// crash.
func TestStateFileAfterForeignRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		h := tunedHarness(t, f)
		f.Set(KnobRun, "0") // an admin: echo 0 > run
		h.advance(time.Second)
		saved, err := os.ReadFile(h.state) // what a SIGKILL now would leave
		if err != nil {
			t.Fatal(err)
		}
		f2 := NewFake() // the restart finds the knobs still tuned
		f2.Write(KnobPagesToScan, "26214")
		f2.Write(KnobSleepMillisecs, "1")
		state := filepath.Join(t.TempDir(), "ksm.snapshot")
		if err := os.WriteFile(state, saved, 0o600); err != nil {
			t.Fatal(err)
		}
		h2 := newHarness(t, f2, Config{StateFile: state})
		h2.start()
		for k, v := range map[string]string{KnobPagesToScan: "100", KnobSleepMillisecs: "20"} {
			if got, _ := f2.Read(k); got != v {
				t.Errorf("after the restart: %s = %s; want the original %s", k, got, v)
			}
		}
		h2.shutdown()
		h.shutdown()
	})
}

// TestPagesToScanBasis: the rate follows what is known to merge. Closing
// the last export keeps the rate (the AnonPages fallback, 20 GiB here,
// would raise it), and sizes from kicks add up without wrapping.
func TestPagesToScanBasis(t *testing.T) {
	for name, tc := range map[string]struct {
		events func(h *harness)
		want   string
	}{
		"last export closed": {func(h *harness) {
			h.th.ExportOpened("a", 64<<20)
			synctest.Wait()
			h.wantKnobs(map[string]string{KnobPagesToScan: "1638"})
			h.th.ExportClosed("a")
		}, "1638"},
		"huge kicks": {func(h *harness) {
			h.th.Send(Event{Kind: EventKick, Name: "x", Bytes: 1 << 62})
			h.th.Send(Event{Kind: EventKick, Name: "y", Bytes: 1 << 62})
		}, "30000"},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := NewFake()
				h := newHarness(t, f, Config{})
				h.th.meminfo = writeTemp(t, "AnonPages:      20971520 kB\n")
				h.start()
				tc.events(h)
				synctest.Wait()
				if v, _ := f.Read(KnobPagesToScan); v != tc.want {
					t.Errorf("pages_to_scan = %s; want %s", v, tc.want)
				}
				h.shutdown()
			})
		})
	}
}

// TestNoGeneralProfit: before Linux 6.4 there is no general_profit; a
// rising pages_sharing is progress, so the throttler holds aggressive.
func TestNoGeneralProfit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		f.Remove("general_profit")
		h := tunedHarness(t, f)
		for i := int64(1); i <= 3; i++ {
			f.SetCounter("full_scans", i)
			f.SetCounter("pages_sharing", i*10000)
			h.advance(time.Second)
		}
		if s := h.th.State(); s != Aggressive {
			t.Errorf("state %v after 3 s of rising pages_sharing; want aggressive", s)
		}
		h.shutdown()
	})
}

// TestSmapsLargeMapping: merged bytes of a mapping of 4 GiB or more do
// not overflow.
func TestSmapsLargeMapping(t *testing.T) {
	const lo, size = 0x7f0000000000, 8 << 30
	smaps := fmt.Sprintf("%x-%x rw-p 00000000 00:00 0 \nSize: %d kB\nKSM: %d kB\n", lo, lo+size, size>>10, size>>10)
	got, err := sumSmapsKSM(strings.NewReader(smaps), lo, lo+size)
	if err != nil || got != size {
		t.Errorf("merged bytes of a fully merged 8 GiB mapping = %d, %v; want %d", got, err, int64(size))
	}
}

// tunedHarness starts a throttler on f and opens a 1 GiB export "a", so
// that it is tuned (aggressive). It runs inside synctest.Test.
func tunedHarness(t *testing.T, f *Fake) *harness {
	t.Helper()
	h := newHarness(t, f, Config{})
	h.start()
	h.th.ExportOpened("a", gib)
	synctest.Wait()
	return h
}
