package ksm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStateFile is where the snapshot of the original knob values is kept
// while the throttler has changed them, so that a restarted nbdd can restore
// them after a crash or SIGKILL.
const DefaultStateFile = "/run/nbdd/ksm.snapshot"

// managedKnobs are the knobs the Throttler may write, in restore order:
// advisor_mode first (switching it resets pages_to_scan), run last.
var managedKnobs = []string{
	KnobAdvisorMode, KnobAdvisorMaxCPU, KnobAdvisorTargetScanTime,
	KnobPagesToScan, KnobSleepMillisecs, KnobRun,
}

// Snapshot holds the original values of the managed knobs that exist on this
// kernel, keyed by knob name.
type Snapshot map[string]string

// takeSnapshot reads every managed knob that exists.
func takeSnapshot(store KnobStore) (Snapshot, error) {
	s := Snapshot{}
	for _, k := range managedKnobs {
		v, err := store.Read(k)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		s[k] = v
	}
	if v, ok := s[KnobRun]; ok {
		s[KnobRun] = restorableRun(v)
	}
	if _, ok := s[KnobRun]; !ok {
		return nil, fmt.Errorf("ksm: no %s knob: %w", KnobRun, fs.ErrNotExist)
	}
	return s, nil
}

// restorableRun is the value of run to restore for a run that read v. run
// reads back what was last written: 2 after an admin's one-off unmerge of
// every KSM page, which written back would unmerge the whole host again
// (other VMs' pages too), so it is restored as 0, the stopped state it
// left behind; and with 4 added while memory is being hot-removed, which
// the kernel refuses as a value.
func restorableRun(v string) string {
	n, err := strconv.Atoi(v)
	if err != nil {
		return v
	}
	n &^= 4 // KSM_RUN_OFFLINE
	if n == 2 {
		n = 0
	}
	return strconv.Itoa(n)
}

// stateFile is the JSON form of DefaultStateFile.
type stateFile struct {
	Version int       `json:"version"`
	PID     int       `json:"pid"`
	Time    time.Time `json:"time"`
	Knobs   Snapshot  `json:"knobs"`
}

// saveSnapshot writes s to path atomically: a temporary file in the same
// directory, fsync, then rename.
func saveSnapshot(path string, s Snapshot, now time.Time) error {
	b, err := json.Marshal(stateFile{Version: 1, PID: os.Getpid(), Time: now.UTC(), Knobs: s})
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("ksm: state file: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("ksm: state file: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("ksm: state file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("ksm: state file: %w", err)
	}
	return nil
}

// loadSnapshot reads a state file; it returns fs.ErrNotExist (wrapped) if none.
func loadSnapshot(path string) (Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ksm: state file: %w", err)
	}
	var sf stateFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return nil, fmt.Errorf("ksm: state file %s: %w", path, err)
	}
	// run may be missing: it is left out once someone else manages it.
	if sf.Version != 1 || sf.Knobs == nil {
		return nil, fmt.Errorf("ksm: state file %s: unsupported content", path)
	}
	if v, ok := sf.Knobs[KnobRun]; ok {
		sf.Knobs[KnobRun] = restorableRun(v) // files of earlier versions kept it raw
	}
	return sf.Knobs, nil
}

// restorePlan returns the values of s in restore order (managedKnobs), leaving
// out pages_to_scan when the restored advisor_mode is scan-time: the kernel owns
// it then (it rejects writes with EINVAL), and the switch has already reset it.
func restorePlan(s Snapshot) []Write {
	var plan []Write
	for _, k := range managedKnobs {
		want, ok := s[k]
		if !ok || (k == KnobPagesToScan && s[KnobAdvisorMode] == AdvisorScanTime) {
			continue
		}
		plan = append(plan, Write{k, want})
	}
	return plan
}

// LockStateFile takes an exclusive lock on path+".lock" (flock), so that
// two throttlers sharing a state file, which would restore each other's
// snapshots and delete each other's file, cannot run at once. The lock
// is released by release, which also removes the lock file, or when the
// process exits (a crash leaves the file, unlocked, for the next run).
func LockStateFile(path string) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("ksm: lock: %w", err)
	}
	lockPath := path + ".lock"
	for {
		f, err := lockFile(lockPath, path)
		switch {
		case err != nil:
			return nil, err
		case f != nil:
			// Removed while locked, so no other throttler can lock this
			// file after it is gone (lockFile checks for that).
			return func() { os.Remove(lockPath); f.Close() }, nil
		}
	}
}

// lockFile opens and locks lockPath. It returns nil and no error when the
// file it locked was removed or replaced before the lock was taken (a
// throttler that released it in between), so that the caller tries again
// rather than hold a lock on a file nobody else can see.
func lockFile(lockPath, statePath string) (*os.File, error) {
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ksm: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("ksm: another throttler (another nbdd --ksm) uses the state file %s", statePath)
		}
		return nil, fmt.Errorf("ksm: lock %s: %w", lockPath, err)
	}
	if !stillAt(f, lockPath) {
		f.Close()
		return nil, nil
	}
	return f, nil
}

// stillAt reports whether f is the file now at path.
func stillAt(f *os.File, path string) bool {
	held, err := f.Stat()
	if err != nil {
		return false
	}
	now, err := os.Stat(path)
	return err == nil && os.SameFile(held, now)
}
