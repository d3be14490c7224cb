package main

import (
	"fmt"
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
	cfg.srv.Source = src
	return nil
}

// checkDirHoldsNoLoadFile refuses a writable --dir that holds the file of
// a writable load export, for the reason checkExportedTwice gives: the
// directory's export would write the file directly and the load export's
// copy would overwrite those writes. Files put into the directory later
// are not checked.
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
		for _, f := range cfg.files {
			if f.copyBack && os.SameFile(f.info, info) {
				return usage("export %q is a writable load export of %s, which --dir %s also exports; its copy would overwrite the other's writes (make it ro, or move it out of the directory)", f.name, e.Name(), cfg.dir)
			}
		}
	}
	return nil
}
