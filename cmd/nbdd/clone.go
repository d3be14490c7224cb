package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/nbdd/nbdd/backend"
	"github.com/urfave/cli/v2"
)

// cloneBase is a base opened for the clone exports over it: one per file
// and way of holding it (read from the file, or loaded, mergeable or
// not), shared by all of them.
type cloneBase struct {
	key       baseKey
	base      *backend.CloneBase
	mergeable bool
}

// baseKey identifies a base file and how it is held.
type baseKey struct {
	dev, ino  uint64
	load, ksm bool
}

// isClone reports whether spec is a copy-on-write export.
func isClone(spec exportSpec) bool { return spec.has("cow") || spec.has("snapshot") }

// openCloneExport opens a copy-on-write export over the base spec.value:
// with cow=PATH the overlay at PATH, created if absent; with snapshot a
// throw-away overlay in $TMPDIR that nothing outlives.
func (cfg *config) openCloneExport(spec exportSpec) (backend.Backend, error) {
	ro := spec.has("ro")
	switch {
	case spec.has("cow") && spec.has("snapshot"):
		return nil, usage("--export %s: cow=PATH keeps the clone's writes and snapshot throws them away: pick one", spec.name)
	case spec.has("direct"):
		return nil, usage("--export %s: direct does not apply to a clone (its base and overlay use the page cache)", spec.name)
	case spec.has("snapshot") && ro:
		return nil, usage("--export %s: a read-only throw-away clone is the base itself: drop snapshot or ro", spec.name)
	}
	base, err := cfg.cloneBase(spec)
	if err != nil {
		return nil, err
	}
	if spec.has("snapshot") {
		c, err := backend.NewTempClone(os.TempDir(), base, 0)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("export %q: %v", spec.name, err), 1)
		}
		return c.Export(), nil
	}
	path := spec.opts["cow"]
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !ro {
		// Another nbdd may create it at the same moment: then open theirs.
		if err := backend.CreateOverlay(path, base, 0); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, cli.Exit(fmt.Sprintf("export %q: %v", spec.name, err), 1)
		}
	}
	if err := cfg.checkOverlay(spec.name, path); err != nil { // noted after it was made, for --dir
		return nil, err
	}
	c, err := backend.OpenClone(path, base, ro)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("export %q: %v", spec.name, unwrapPathError(err)), 1)
	}
	return c.Export(), nil
}

// cloneBase returns the base of a clone export, opening it the first
// time: clones of one base in one process share one open file, so the
// page cache holds its pages once, or one copy in memory (load).
func (cfg *config) cloneBase(spec exportSpec) (*backend.CloneBase, error) {
	fi, err := os.Stat(spec.value)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("export %q: base: %v", spec.name, unwrapPathError(err)), 2)
	}
	if err := cfg.noteFile(spec.name, fi, exportedFile{base: true}); err != nil {
		return nil, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		return nil, cli.Exit(fmt.Sprintf("export %q: base %s: no device and inode number", spec.name, spec.value), 2)
	}
	key := baseKey{dev: st.Dev, ino: st.Ino, load: spec.has("load"), ksm: spec.has("ksm")}
	for _, b := range cfg.bases {
		if b.key == key {
			return b.base, nil
		}
	}
	base, err := backend.OpenCloneBase(spec.value, key.load, key.ksm)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("export %q: base: %v", spec.name, unwrapPathError(err)), 2)
	}
	cfg.bases = append(cfg.bases, cloneBase{key: key, base: base, mergeable: key.ksm})
	return base, nil
}

// checkOverlay refuses an overlay that is also another export's file or
// base, which would write it, or be written through it, behind the
// clone's map.
func (cfg *config) checkOverlay(name, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return nil // reported by the open
	}
	return cfg.noteFile(name, fi, exportedFile{overlay: true})
}

// noteFile records that export name uses the file fi in the way f says
// (its name and info are filled in), and refuses it when an export
// recorded before uses the same file in a way that conflicts.
func (cfg *config) noteFile(name string, fi os.FileInfo, f exportedFile) error {
	f.name, f.info = name, fi
	for _, g := range cfg.files {
		if !os.SameFile(g.info, fi) {
			continue
		}
		if msg := fileConflict(g, f); msg != "" {
			return usage("%s", msg)
		}
	}
	cfg.files = append(cfg.files, f)
	return nil
}

// fileConflict says why two exports may not use one file, or "" if they
// may: a writable load export's copy would overwrite the other's writes;
// an overlay belongs to its clone alone; a clone's base must not be
// written.
func fileConflict(a, b exportedFile) string {
	switch {
	case a.copyBack || b.copyBack:
		return fmt.Sprintf("exports %q and %q are the same file, and a writable load export's copy would overwrite the other's writes (make them ro, or export it once)", a.name, b.name)
	case a.overlay || b.overlay:
		return fmt.Sprintf("exports %q and %q use the same file, which is a clone's overlay: nothing else may use it", a.name, b.name)
	case a.base && b.writable || b.base && a.writable:
		return fmt.Sprintf("exports %q and %q use the same file, the base of a clone, which the other export would write (make it ro)", a.name, b.name)
	}
	return ""
}

// mergeableBases returns the bases of clone exports loaded into mergeable
// memory, by the name the KSM throttler knows them by.
func (cfg *config) mergeableBases() map[string]*backend.Mapped {
	out := map[string]*backend.Mapped{}
	for _, b := range cfg.bases {
		if m, ok := b.base.Backend().(*backend.Mapped); ok && b.mergeable {
			out["base:"+b.base.Path()] = m
		}
	}
	return out
}
