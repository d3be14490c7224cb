package main

import (
	"fmt"
	"io/fs"
	"os"

	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
)

// directory adds --dir as a source of exports named after its files.
func (cfg *config) directory(readOnly bool) error {
	if cfg.dir == "" {
		return nil
	}
	src, err := server.NewDirSource(cfg.dir, readOnly)
	if err != nil {
		return cli.Exit(fmt.Sprintf("--dir %s: %v", cfg.dir, err), 2)
	}
	cfg.closers = append(cfg.closers, src)
	cfg.dirWritable = !readOnly
	if err := cfg.checkDirHoldsNoLoadFile(); err != nil {
		return err
	}
	src.Refuse = cfg.dirMustWithhold // files that appear in the directory later
	cfg.srv.Source = src
	return nil
}

// dirMustWithhold reports whether the directory must not export the file
// info: see dirConflict.
func (cfg *config) dirMustWithhold(info fs.FileInfo) bool { return cfg.dirConflict(info) != "" }

// dirConflict says why the directory must not export the file info, or
// "" if it may: it is the file of a writable load export, whose copy
// would overwrite the directory export's writes, or, when the directory
// is writable, a clone's base or overlay, which its export would write
// behind the clone.
func (cfg *config) dirConflict(info fs.FileInfo) string {
	for _, f := range cfg.files {
		if !os.SameFile(f.info, info) {
			continue
		}
		switch {
		case f.copyBack:
			return "is also the file of a writable load export, whose copy would overwrite the directory export's writes (make the load export ro, or move the file out of the directory)"
		case cfg.dirWritable && f.base:
			return fmt.Sprintf("is the base of clone export %q, which the writable directory export could write (use --read-only, or move the file out of the directory)", f.name)
		case cfg.dirWritable && f.overlay:
			return fmt.Sprintf("is the overlay of clone export %q, which the writable directory export could write (move it out of the directory)", f.name)
		}
	}
	return ""
}

// checkDirHoldsNoLoadFile refuses a --dir that holds the file of a
// writable load export, or, writable, a clone's base or overlay (see
// dirConflict). Files put into the directory later are withheld by the
// DirSource's Refuse instead.
func (cfg *config) checkDirHoldsNoLoadFile() error {
	entries, err := os.ReadDir(cfg.dir)
	if err != nil {
		return cli.Exit(fmt.Sprintf("--dir %s: %v", cfg.dir, err), 2)
	}
	root, err := os.OpenRoot(cfg.dir)
	if err != nil {
		return cli.Exit(fmt.Sprintf("--dir %s: %v", cfg.dir, err), 2)
	}
	defer root.Close()
	for _, e := range entries {
		info, err := root.Stat(e.Name()) // follows symlinks as the directory's exports do
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		if msg := cfg.dirConflict(info); msg != "" {
			return usage("%s in --dir %s %s", e.Name(), cfg.dir, msg)
		}
	}
	return nil
}
