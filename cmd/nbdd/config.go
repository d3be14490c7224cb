package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
)

// defaultMemorySize is the size of the export nbdd serves when none is
// configured.
const defaultMemorySize = 1 << 30

// config is a server built from the command line, with what must be
// closed when it stops.
type config struct {
	srv       *server.Server
	dir       string
	closers   []io.Closer
	mergeable map[string]bool     // exports marked ksm
	files     []exportedFile      // the files of --export, to catch one exported twice
	faultSpec string              // --fault, when set
	budget    *bufstrategy.Budget // --memory-budget, shared by every connection's buffers
	logger    *slog.Logger
	s3Bases   *logdisk.Bases // the bases of the S3 clones served, shared
	bases     []cloneBase    // the bases of clone exports, closed after them
	// dirWritable is set for a writable --dir, which must not export
	// the files of clone exports.
	dirWritable bool
}

// exportedFile is a file of an --export, and what the export does with it.
type exportedFile struct {
	name     string
	info     os.FileInfo
	copyBack bool // a writable load export: a copy in memory written back
	writable bool // the export writes the file
	base     bool // the read-only base of a clone export
	overlay  bool // the overlay of a clone export
}

func (c *config) close() {
	for _, cl := range c.closers {
		cl.Close()
	}
	for _, b := range c.bases {
		b.base.Close()
	}
	if c.srv.Buffers != nil {
		c.srv.Buffers.Close()
	}
}

// buildServer sets the server up from the flags, all but its exports,
// which cfg.exports opens once the sockets listen.
func buildServer(c *cli.Context, logger *slog.Logger) (*config, error) {
	cfg := &config{srv: &server.Server{Logger: logger}, dir: c.String("dir"), mergeable: map[string]bool{}, logger: logger, s3Bases: &logdisk.Bases{}}
	if err := cfg.limits(c); err != nil {
		return nil, err
	}
	if err := cfg.configureTLS(c); err != nil {
		return nil, err
	}
	if err := cfg.configureAccess(c); err != nil {
		return nil, err
	}
	return cfg, nil
}

// sendBufferFlag maps --send-buffer to Server.SendBuffer: "auto" is 0
// (the server's choice per socket type), "0" is negative (the kernel's
// default), anything else a size up to 1 GiB.
func sendBufferFlag(v string) (int, error) {
	if v == "auto" {
		return 0, nil
	}
	n, err := parseSize(v)
	switch {
	case err != nil:
		return 0, usage("--send-buffer: %v (or auto)", err)
	case n == 0:
		return -1, nil
	case n < 4096 || n > 1<<30:
		return 0, usage("--send-buffer %s: want 4KiB to 1GiB, 0 or auto", v)
	}
	return int(n), nil
}

// limits applies the sizes, timeouts and the buffer strategy.
func (cfg *config) limits(c *cli.Context) error {
	s := cfg.srv
	maxReq, err := sizeFlag(c, "max-request-size", server.MinRequestSizeLimit, server.MaxRequestSizeLimit)
	if err != nil {
		return err
	}
	inflight, err := sizeFlag(c, "max-inflight-bytes", 4096, 1<<40)
	if err != nil {
		return err
	}
	s.MaxRequestSize, s.MaxInflightBytes = uint32(maxReq), inflight
	if s.QueueDepth = c.Int("queue-depth"); s.QueueDepth < 1 || s.QueueDepth > 4096 {
		return usage("--queue-depth %d: want 1 to 4096", s.QueueDepth)
	}
	if s.SendBuffer, err = sendBufferFlag(c.String("send-buffer")); err != nil {
		return err
	}
	for _, name := range []string{"handshake-timeout", "idle-timeout", "shutdown-timeout"} {
		if d := c.Duration(name); d < 0 {
			return usage("--%s %v: want 0 or more", name, d)
		}
	}
	for _, name := range []string{"max-connections", "max-connections-per-host"} {
		if n := c.Int(name); n < 0 {
			return usage("--%s %d: want 0 (no limit) or more", name, n)
		}
	}
	s.HandshakeTimeout, s.IdleTimeout = c.Duration("handshake-timeout"), c.Duration("idle-timeout")
	s.MaxConns, s.MaxConnsPerHost = c.Int("max-connections"), c.Int("max-connections-per-host")
	s.NoStructuredReplies = c.Bool("no-structured-replies")
	s.NoIdlePoll = c.Bool("no-idle-poll")
	switch s.MaxBackendCalls = c.Int("max-backend-calls"); {
	case s.MaxBackendCalls < 0:
		return usage("--max-backend-calls %d: want 0 (no limit) or more", s.MaxBackendCalls)
	case s.MaxBackendCalls == 0:
		s.MaxBackendCalls = -1
	}
	budget, err := sizeFlag(c, "memory-budget", 0, 1<<50)
	if err != nil {
		return err
	}
	b, err := bufstrategy.NewBudget(budget)
	if err != nil {
		return usage("--memory-budget: %v", err)
	}
	cfg.budget = b
	s.Buffers, err = bufstrategy.New(c.String("strategy"), bufstrategy.Config{MaxRequest: int(maxReq), Budget: b})
	if err != nil {
		return usage("--strategy: %v", err)
	}
	return nil
}

func sizeFlag(c *cli.Context, name string, lo, hi int64) (int64, error) {
	n, err := parseSize(c.String(name))
	if err != nil {
		return 0, usage("--%s: %v", name, err)
	}
	if n < lo || n > hi {
		return 0, usage("--%s %s: want %s to %s", name, c.String(name), formatSize(lo), formatSize(hi))
	}
	return n, nil
}

// exports opens every --export and --memory, or the default memory export.
func (cfg *config) exports(c *cli.Context) error {
	for _, v := range c.StringSlice("export") {
		if err := cfg.addExport("export", v, c.Bool("read-only"), cfg.openFileExport); err != nil {
			return err
		}
	}
	for _, v := range c.StringSlice("memory") {
		if err := cfg.addExport("memory", v, c.Bool("read-only"), cfg.openMemoryExport); err != nil {
			return err
		}
	}
	for _, v := range c.StringSlice("s3") {
		if err := cfg.addExport("s3", v, c.Bool("read-only"), cfg.openS3Export(c.String("s3-cache-dir"))); err != nil {
			return err
		}
	}
	if len(cfg.srv.Exports) == 0 && cfg.dir == "" {
		cfg.srv.Exports = []server.Export{{Name: "default", Description: "nbdd in-memory export", Backend: backend.NewMemory(defaultMemorySize), ReadOnly: c.Bool("read-only")}}
	}
	if err := cfg.directory(c.Bool("read-only")); err != nil {
		return err
	}
	if err := cfg.faults(c.String("fault")); err != nil {
		return err
	}
	return cfg.defaultExport(c.String("default-export"))
}

type opener func(spec exportSpec) (backend.Backend, error)

func (cfg *config) addExport(kind, value string, readOnly bool, open opener) error {
	spec, err := parseExportSpec(kind, value)
	if err != nil {
		return usage("%v", err)
	}
	for _, e := range cfg.srv.Exports {
		if e.Name == spec.name {
			return usage("export %s is configured twice", quoteShort(spec.name))
		}
	}
	if readOnly {
		spec.opts["ro"] = "" // --read-only: opened read-only too, not only served so
	}
	if spec.has("tls-only") && cfg.srv.TLSMode == server.TLSOff {
		return usage("export %s is tls-only, which needs --tls on or --tls require", quoteShort(spec.name))
	}
	b, err := open(spec)
	if err != nil {
		return err
	}
	if cl, ok := b.(io.Closer); ok {
		cfg.closers = append(cfg.closers, cl)
	}
	if spec.has("ksm") {
		cfg.mergeable[spec.name] = true
	}
	access, err := cfg.exportAccess(spec)
	if err != nil {
		return err
	}
	cfg.srv.Exports = append(cfg.srv.Exports, server.Export{
		Name:        spec.name,
		Description: spec.opts["description"],
		Backend:     b,
		ReadOnly:    spec.has("ro"),
		TLSOnly:     spec.has("tls-only"),
		Access:      access,
	})
	return nil
}

func (cfg *config) openFileExport(spec exportSpec) (backend.Backend, error) {
	ro := spec.has("ro")
	if spec.has("ksm") && !spec.has("load") {
		return nil, usage("--export %s: ksm needs load (only anonymous memory can be merged)", spec.name)
	}
	if !isClone(spec) {
		if err := cfg.checkExportedTwice(spec, spec.has("load") && !ro); err != nil {
			return nil, err
		}
	}
	var b backend.Backend
	var err error
	switch {
	case isClone(spec):
		b, err = cfg.openCloneExport(spec)
		if err != nil {
			return nil, err
		}
	case spec.has("load"):
		b, err = backend.LoadMapped(spec.value, spec.has("ksm"), !ro)
	case spec.has("direct"):
		b, err = backend.OpenFileDirect(spec.value, ro) // O_DIRECT: no page cache; 512-byte minimum block size
	default:
		b, err = backend.OpenFile(spec.value, ro)
	}
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("export %s: %v%s", quoteShort(spec.name), unwrapPathError(err), openHint(err, ro)), 2)
	}
	if err := guardExport(cfg.logger, spec.name, spec.value, b, spec.has("raw")); err != nil {
		closeBackend(b)
		return nil, err
	}
	return b, nil
}

func closeBackend(b backend.Backend) {
	if c, ok := b.(io.Closer); ok {
		c.Close()
	}
}

// checkExportedTwice refuses a file exported a second time when the two
// exports conflict (see fileConflict): when either is a writable load
// export, whose copy in memory, written back on FLUSH, and the other
// export would overwrite each other's writes, or when it is a clone's
// base or overlay.
func (cfg *config) checkExportedTwice(spec exportSpec, copyBack bool) error {
	info, err := os.Stat(spec.value)
	if err != nil {
		return nil // reported by the open that follows
	}
	return cfg.noteFile(spec.name, info, exportedFile{copyBack: copyBack, writable: !spec.has("ro")})
}

func (cfg *config) openMemoryExport(spec exportSpec) (backend.Backend, error) {
	size, err := parseSize(spec.value)
	switch {
	case err != nil:
		return nil, usage("--memory %s: %v", quoteShort(spec.name), err)
	case size <= 0:
		return nil, usage("--memory %s: size %q must be more than 0", quoteShort(spec.name), spec.value)
	}
	var b backend.Backend
	switch {
	case spec.has("ksm") && spec.has("prealloc"):
		return nil, usage("--memory %s: ksm and prealloc exclude each other (KSM merges pages that preallocation would fault in apart)", quoteShort(spec.name))
	case spec.has("ksm"):
		if b, err = backend.NewMapped(size, true); err != nil {
			return nil, cli.Exit(fmt.Sprintf("export %s: %v", quoteShort(spec.name), err), 1)
		}
	default:
		m := backend.NewMemory(size)
		if spec.has("prealloc") {
			if err := m.Preallocate(); err != nil {
				return nil, cli.Exit(fmt.Sprintf("export %s: %v", quoteShort(spec.name), err), 1)
			}
		}
		b = m
	}
	return b, guardExport(cfg.logger, spec.name, "memory", b, true)
}

// faults wraps every export in fault injection (for tests), and says so:
// a --fault, or an NBDD_FAULT left in the environment, makes exports fail
// on purpose, which must not pass for a failing disk.
func (cfg *config) faults(spec string) error {
	if spec == "" {
		return nil
	}
	rules, err := backend.ParseFaultSpec(spec)
	if err != nil {
		return usage("--fault: %v", err)
	}
	cfg.faultSpec = spec
	cfg.logger.Warn("FAULT INJECTION IS ON: exports fail on purpose as --fault (or NBDD_FAULT) says; unset it to serve normally", "fault", spec)
	for i := range cfg.srv.Exports {
		cfg.srv.Exports[i].Backend = backend.NewFault(cfg.srv.Exports[i].Backend, rules...)
	}
	return nil
}

func (cfg *config) defaultExport(name string) error {
	if name == "" {
		return nil
	}
	for _, e := range cfg.srv.Exports {
		if e.Name == name {
			cfg.srv.DefaultExport = name
			return nil
		}
	}
	if cfg.dir != "" {
		cfg.srv.DefaultExport = name
		return nil
	}
	return usage("--default-export %s: no such export", quoteShort(name))
}

// unwrapPathError keeps "open PATH: no such file or directory" short.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe
	}
	return err
}
