package ksm

import (
	"context"
	"github.com/nbdd/nbdd/internal/testenv"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// watchTest runs watchDir on dir; it returns the events and a channel that
// receives each time a watch is in place.
func watchTest(t *testing.T, dir string) (events chan Event, ready chan struct{}) {
	t.Helper()
	events, ready = make(chan Event, 64), make(chan struct{}, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- watchDir(ctx, dir, func(ev Event) { events <- ev }, func() { ready <- struct{}{} })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watchDir: %v", err)
		}
	})
	return events, ready
}

// next returns the next event; the timeout only guards against a hang.
func next(t *testing.T, events chan Event) Event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
		return Event{}
	}
}

// until skips events until one for name, which it returns.
func until(t *testing.T, events chan Event, name string) Event {
	t.Helper()
	for {
		if ev := next(t, events); ev.Name == name {
			return ev
		}
	}
}

func noEvent(t *testing.T, events chan Event) {
	t.Helper()
	select {
	case ev := <-events:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

func TestWatchDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "old.img"), []byte("old"), 0o644)
	events, ready := watchTest(t, dir)
	<-ready
	noEvent(t, events) // files present at start do not kick

	img := filepath.Join(dir, "new.img")
	if err := os.WriteFile(img, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	// IN_CREATE (size 0 or 8192, racing the write), then IN_CLOSE_WRITE with the full size.
	if ev := next(t, events); ev.Kind != EventKick || ev.Name != img {
		t.Errorf("create: %+v", ev)
	}
	if ev := next(t, events); ev.Name != img || ev.Bytes != 8192 {
		t.Errorf("close-write: %+v; want 8192 bytes", ev)
	}

	tmp := filepath.Join(t.TempDir(), "moved.img")
	os.WriteFile(tmp, make([]byte, 4096), 0o644)
	// Same filesystem (both under TMPDIR) for rename to be IN_MOVED_TO.
	moved := filepath.Join(dir, "moved.img")
	if err := os.Rename(tmp, moved); err != nil {
		testenv.SkipOutsideCI(t, "rename across directories: %v", err)
	}
	if ev := next(t, events); ev.Name != moved || ev.Bytes != 4096 {
		t.Errorf("moved: %+v", ev)
	}
}

func TestWatchDirAppearsLater(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "images")
	events, ready := watchTest(t, dir)
	<-ready // watching the parent
	// Create the directory and a file at once: the file may land before the
	// watch on dir exists; the listing after the watch must still report it.
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "a.img")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	until(t, events, img)

	// Removing the directory makes the watcher wait for it again.
	<-ready
	os.RemoveAll(dir)
	<-ready // watching the parent again
	os.Mkdir(dir, 0o755)
	<-ready
	os.WriteFile(filepath.Join(dir, "b.img"), nil, 0o644)
	until(t, events, filepath.Join(dir, "b.img"))
}

func TestWatchDirNoParent(t *testing.T) {
	err := WatchDir(context.Background(), filepath.Join(t.TempDir(), "x", "y"), func(Event) {})
	if err == nil {
		t.Error("watching under a missing parent succeeded")
	}
}

// TestWatchDirRenamedAway: a watched directory renamed away is let go, and
// one re-created at the path is watched.
func TestWatchDirRenamedAway(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "images")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	events, ready := watchTest(t, dir)
	<-ready
	if err := os.Rename(dir, filepath.Join(parent, "images.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	<-ready // watching the new directory
	img := filepath.Join(dir, "new.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Name == img {
				return
			}
		case <-deadline:
			t.Fatalf("no kick for %s after the watched directory was renamed away and re-created", img)
		}
	}
}
