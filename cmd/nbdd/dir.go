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
	if err := cfg.checkDirHoldsNoLoadFile(); err != nil {
		return err
	}
	src.Refuse = cfg.isWritableLoadFile // files that appear in the directory later
	cfg.srv.Source = src
	return nil
}

// isWritableLoadFile reports whether info is the file of a writable load
// export.
func (cfg *config) isWritableLoadFile(info fs.FileInfo) bool {
	for _, f := range cfg.files {
		if f.copyBack && os.SameFile(f.info, info) {
			return true
		}
	}
	return false
}

// checkDirHoldsNoLoadFile refuses a writable --dir that holds the file of
// a writable load export, for the reason checkExportedTwice gives: the
// directory's export would write the file directly and the load export's
// copy would overwrite those writes. Files put into the directory later
// are withheld by the DirSource's Refuse instead.
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
		if cfg.isWritableLoadFile(info) {
			return usage("%s in --dir %s is also the file of a writable load export, whose copy would overwrite the directory export's writes (make the load export ro, or move the file out of the directory)", e.Name(), cfg.dir)
		}
	}
	return nil
}
