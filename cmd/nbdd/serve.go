package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
)

const defaultListen = "tcp://127.0.0.1:10809"

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve exports until SIGINT, SIGTERM or SIGHUP",
		UsageText: "nbdd serve [--listen URL]... [--export NAME=PATH[,ro]]... [--memory NAME=SIZE[,ro]]...",
		Description: "With no export, nbdd serves a 1 GiB in-memory export named \"default\".\n" +
			"Every flag can also be set through the environment variable shown.",
		Flags:  serveFlags(),
		Action: serve,
		// Without it urfave/cli prints "Incorrect Usage" and the help to
		// stdout and exits 1; the app-level handler covers only root flags.
		OnUsageError: usageError,
	}
}

func serveFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringSliceFlag{Name: "listen", Usage: "listen on `URL`: tcp://HOST:PORT or unix:///PATH (repeatable)", EnvVars: []string{"NBDD_LISTEN"}},
		&cli.StringSliceFlag{Name: "export", Usage: "export a file or block device: `NAME=PATH`[,ro][,direct][,load][,ksm][,cow=OVERLAY|,snapshot][,tls-only][,description=TEXT] (repeatable; cow=OVERLAY: a copy-on-write clone of PATH whose writes go to OVERLAY, created if absent; snapshot: a throw-away clone; description takes the rest, so comes last; a comma in a path is written ,,)", EnvVars: []string{"NBDD_EXPORT"}},
		&cli.StringSliceFlag{Name: "memory", Usage: "export memory: `NAME=SIZE`[,ro][,ksm][,tls-only][,description=TEXT] (repeatable; description last)", EnvVars: []string{"NBDD_MEMORY"}},
		&cli.StringFlag{Name: "dir", Usage: "export every regular file in `DIR` under its file name", EnvVars: []string{"NBDD_DIR"}},
		&cli.StringFlag{Name: "default-export", Usage: "export `NAME` that clients asking for the empty name get", EnvVars: []string{"NBDD_DEFAULT_EXPORT"}},
		&cli.BoolFlag{Name: "read-only", Usage: "make every export read-only", EnvVars: []string{"NBDD_READ_ONLY"}},
		&cli.StringFlag{Name: "max-request-size", Value: "32MiB", Usage: "largest READ or WRITE `SIZE`", EnvVars: []string{"NBDD_MAX_REQUEST_SIZE"}},
		&cli.IntFlag{Name: "queue-depth", Value: server.DefaultQueueDepth, Usage: "requests in flight per connection", EnvVars: []string{"NBDD_QUEUE_DEPTH"}},
		&cli.StringFlag{Name: "max-inflight-bytes", Value: "64MiB", Usage: "payload `SIZE` in flight per connection", EnvVars: []string{"NBDD_MAX_INFLIGHT_BYTES"}},
		&cli.StringFlag{Name: "send-buffer", Value: "auto", Usage: "socket send buffer `SIZE` per connection (auto: 1MiB on unix sockets, autotuned on TCP; 0: the kernel's default)", EnvVars: []string{"NBDD_SEND_BUFFER"}},
		&cli.StringFlag{Name: "strategy", Value: "pool", Usage: "buffer strategy: grow, resize, pool or stream", EnvVars: []string{"NBDD_STRATEGY"}},
		&cli.StringFlag{Name: "memory-budget", Value: "256MiB", Usage: "request buffer `SIZE` held across all connections", EnvVars: []string{"NBDD_MEMORY_BUDGET"}},
		&cli.DurationFlag{Name: "handshake-timeout", Value: server.DefaultHandshakeTimeout, Usage: "time a client has to finish the handshake", EnvVars: []string{"NBDD_HANDSHAKE_TIMEOUT"}},
		&cli.DurationFlag{Name: "idle-timeout", Usage: "close connections idle, or whose client reads no reply or stops mid-WRITE, this long (0: never)", EnvVars: []string{"NBDD_IDLE_TIMEOUT"}},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, Usage: "time in-flight requests get to finish on SIGTERM, SIGINT or SIGHUP", EnvVars: []string{"NBDD_SHUTDOWN_TIMEOUT"}},
		&cli.IntFlag{Name: "max-connections", Value: 1024, Usage: "connections server-wide (0: no limit)", EnvVars: []string{"NBDD_MAX_CONNECTIONS"}},
		&cli.IntFlag{Name: "max-backend-calls", Value: server.DefaultMaxBackendCalls, Usage: "backend calls running at once on their own goroutines, server-wide (0: no limit)", EnvVars: []string{"NBDD_MAX_BACKEND_CALLS"}},
		&cli.IntFlag{Name: "max-connections-per-host", Value: 256, Usage: "connections per client host (0: no limit)", EnvVars: []string{"NBDD_MAX_CONNECTIONS_PER_HOST"}},
		&cli.BoolFlag{Name: "no-structured-replies", Usage: "refuse structured replies, so every reply is simple (like nbdkit --no-sr); clients lose sparse reads, block status and error messages", EnvVars: []string{"NBDD_NO_STRUCTURED_REPLIES"}},
		&cli.StringFlag{Name: "socket-mode", Value: "0660", Usage: "permissions of unix sockets", EnvVars: []string{"NBDD_SOCKET_MODE"}},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"NBDD_LOG_LEVEL"}},
		&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile to `FILE` until nbdd exits", EnvVars: []string{"NBDD_CPUPROFILE"}, Hidden: true},
		&cli.StringFlag{Name: "fault", Usage: "inject faults into every export (testing): `SPEC`", EnvVars: []string{"NBDD_FAULT"}, Hidden: true},
	}, append(tlsFlags(), ksmFlags()...)...)
}

// serve runs the server until a signal: the first SIGINT, SIGTERM or SIGHUP
// shuts down gracefully within --shutdown-timeout, a second exits at once.
func serve(c *cli.Context) error {
	if c.NArg() > 0 {
		return usage("serve takes no arguments (got %q); use --export or --memory", c.Args().First())
	}
	logger, err := newLogger(c.String("log-level"))
	if err != nil {
		return usage("%v", err)
	}
	if path := c.String("cpuprofile"); path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--cpuprofile: %v", err), 2)
		}
		defer stop()
	}
	cfg, err := buildServer(c, logger)
	if err != nil {
		return err
	}
	defer cfg.close()
	listeners, err := listenAll(c, cfg.srv.TLSMode != server.TLSOff, logger)
	if err != nil {
		return err
	}
	k, err := startKSM(c, cfg, logger)
	if err != nil {
		return err
	}
	// The host's KSM settings are restored first thing on a signal, before
	// the connections drain (up to --shutdown-timeout, and a second signal
	// exits at once), and on any other way out.
	stopKSM := sync.OnceValue(func() error { return k.stop(cfg) })
	defer stopKSM()
	// Signals are caught before the exports are announced: a client, or
	// a supervisor, may stop nbdd as soon as it sees them.
	sigs := make(chan os.Signal, 2)
	// SIGHUP too: a closed terminal must not lose unflushed writes.
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	announce(c, cfg, listeners)
	err = runUntilSignal(cfg.srv, listeners, sigs, c.Duration("shutdown-timeout"), logger, func() {
		if err := stopKSM(); err != nil {
			logger.Error("restoring the KSM settings", "err", err)
		}
	})
	return errors.Join(err, stopKSM())
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// announce prints where each export can be reached, as NBD URIs
// (github.com/NetworkBlockDevice/nbd doc/uri.md).
func announce(c *cli.Context, cfg *config, listeners []*listener) {
	for _, e := range cfg.srv.Exports {
		size, _ := e.Backend.Size()
		for _, l := range listeners {
			tls := cfg.srv.TLSMode == server.TLSRequire || e.TLSOnly
			fmt.Fprintf(c.App.Writer, "nbdd: export %q (%s%s) at %s\n", e.Name, formatSize(size), roSuffix(e.ReadOnly), l.uri(e.Name, tls))
		}
	}
	if cfg.dir != "" {
		for _, l := range listeners {
			fmt.Fprintf(c.App.Writer, "nbdd: files of %s at %s\n", cfg.dir, l.uri("FILENAME", cfg.srv.TLSMode == server.TLSRequire))
		}
	}
}

func roSuffix(ro bool) string {
	if ro {
		return ", read-only"
	}
	return ""
}

// runUntilSignal serves on listeners until a signal arrives on sigs, then
// runs onSignal and shuts srv down gracefully.
func runUntilSignal(srv *server.Server, listeners []*listener, sigs <-chan os.Signal, timeout time.Duration, logger *slog.Logger, onSignal func()) error {
	errs := make(chan error, len(listeners))
	var wg sync.WaitGroup
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l.Listener); !errors.Is(err, server.ErrServerClosed) {
				errs <- fmt.Errorf("serve %s: %w", l.url, err)
			}
		}()
	}
	select {
	case err := <-errs:
		srv.Close()
		return err
	case sig := <-sigs:
		logger.Info("shutting down", "signal", sig.String(), "timeout", timeout)
	}
	onSignal()
	go func() {
		sig := <-sigs
		logger.Warn("second signal: exiting at once", "signal", sig.String())
		os.Exit(1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	wg.Wait()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: requests were still running after --shutdown-timeout %v; their connections were closed", timeout)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Info("shut down cleanly")
	return nil
}

// isLoopback reports whether host names only this machine.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// startCPUProfile profiles the server until the returned function runs
// (go tool pprof nbdd FILE).
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
