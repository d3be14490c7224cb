package main

import (
	"fmt"

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
	cfg.srv.Source = src
	return nil
}
