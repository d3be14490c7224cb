package ksm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchMask reports a new image: created, moved in, or written and closed.
// IN_MOVE_SELF reports the directory itself renamed away: the watch
// would follow it to its new name, so it is dropped and dir watched anew.
const watchMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_CLOSE_WRITE | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// WatchDir watches the image directory dir with inotify and sends a kick for
// every file created, moved in or written there, with the file's size as the
// event's Bytes, until ctx is done (then it returns nil).
//
// It adds its watch first and lists the directory afterwards, so that no file
// is missed between the two (Kata's vc trigger missed them). Files present at
// start do not kick: the throttler starts idle. If dir does not exist yet,
// WatchDir waits for it to appear in its parent, and then kicks for the files
// it already holds; if dir is removed, it waits again.
func WatchDir(ctx context.Context, dir string, send func(Event)) error {
	return watchDir(ctx, dir, send, func() {})
}

// watchDir is WatchDir; ready is called whenever a watch is in place (tests).
func watchDir(ctx context.Context, dir string, send func(Event), ready func()) error {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("ksm: inotify: %w", err)
	}
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, dir: dir, send: send, ready: ready}
	stop := context.AfterFunc(ctx, func() { w.f.Close() })
	defer stop()
	defer w.f.Close()
	err = w.run()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

type watcher struct {
	f     *os.File // the inotify descriptor, in the runtime poller
	fd    int
	dir   string
	send  func(Event)
	ready func()
	buf   [64 << 10]byte
}

func (w *watcher) run() error {
	appeared := false
	for {
		wd, err := unix.InotifyAddWatch(w.fd, w.dir, watchMask)
		if errors.Is(err, unix.ENOENT) {
			if err := w.waitForDir(); err != nil {
				return err
			}
			appeared = true
			continue
		}
		if err != nil {
			return fmt.Errorf("ksm: watch %s: %w", w.dir, err)
		}
		if err := w.list(appeared); err != nil {
			return err
		}
		w.ready()
		if err := w.follow(wd); err != nil {
			return err
		}
		appeared = true // removed: wait for it to come back
	}
}

// list reads dir after the watch is in place; it kicks for each file if the
// directory appeared while we watched (those files are new).
func (w *watcher) list(kick bool) error {
	ents, err := os.ReadDir(w.dir)
	if err != nil {
		return fmt.Errorf("ksm: list %s: %w", w.dir, err)
	}
	for _, e := range ents {
		if kick {
			w.kick(e.Name())
		}
	}
	return nil
}

// follow reads events for wd until the watch goes away (the directory was
// deleted: IN_IGNORED; or renamed: IN_MOVE_SELF, and the watch, which
// would follow it, is removed) or reading fails.
func (w *watcher) follow(wd int) error {
	for {
		gone := false
		err := w.read(func(ev *unix.InotifyEvent, name string) {
			switch {
			case ev.Mask&unix.IN_Q_OVERFLOW != 0:
				w.send(Event{Kind: EventKick, Name: w.dir})
			case int(ev.Wd) != wd:
			case ev.Mask&unix.IN_IGNORED != 0:
				gone = true
			case ev.Mask&unix.IN_MOVE_SELF != 0:
				unix.InotifyRmWatch(w.fd, uint32(wd))
				gone = true
			case name != "":
				w.kick(name)
			}
		})
		if err != nil || gone {
			return err
		}
	}
}

// waitForDir watches the parent until dir exists. It checks after adding the
// watch, for the same reason as list.
func (w *watcher) waitForDir() error {
	parent := filepath.Dir(w.dir)
	wd, err := unix.InotifyAddWatch(w.fd, parent, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR)
	if err != nil {
		return fmt.Errorf("ksm: watch %s: %w", parent, err)
	}
	defer unix.InotifyRmWatch(w.fd, uint32(wd))
	w.ready()
	for {
		if fi, err := os.Stat(w.dir); err == nil && fi.IsDir() {
			return nil
		}
		// Any event in the parent may be the one: Stat decides.
		if err := w.read(func(*unix.InotifyEvent, string) {}); err != nil {
			return err
		}
	}
}

func (w *watcher) kick(name string) {
	p := filepath.Join(w.dir, name)
	var size int64
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	w.send(Event{Kind: EventKick, Name: p, Bytes: size})
}

// read reads one batch of events and calls fn for each.
func (w *watcher) read(fn func(ev *unix.InotifyEvent, name string)) error {
	n, err := w.f.Read(w.buf[:])
	if err != nil {
		if errors.Is(err, fs.ErrClosed) {
			return err
		}
		return fmt.Errorf("ksm: read inotify: %w", err)
	}
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&w.buf[off]))
		end := off + unix.SizeofInotifyEvent + int(ev.Len)
		if end > n {
			break
		}
		name := w.buf[off+unix.SizeofInotifyEvent : end]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		fn(ev, string(name))
		off = end
	}
	return nil
}
