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

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
)

const defaultListen = "tcp://127.0.0.1:10809"

// Connection limits. An idle connection costs about 20 KiB (2,000 idle
// connections: 45 MiB RSS), so the server-wide default serves a host
// with a thousand kernel devices at -C 4 in about 80 MiB; the per-host
// one lets one network host take a quarter of it (256 devices at -C 4).
// Unix-socket clients (go-nbd issue 6: 384 connections of one program)
// are not counted per host (server.Peer says why).
const (
	defaultMaxConnections        = 4096
	defaultMaxConnectionsPerHost = 1024
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve exports until SIGINT, SIGTERM or SIGHUP",
		UsageText: "nbdd serve [--listen URL]... [--export NAME=PATH[,ro]]... [--memory NAME=SIZE[,ro]]...",
		Description: "With no export, nbdd serves a 1 GiB in-memory export named \"default\".\n" +
			"Every flag can also be set through the environment variable shown." + faultsActiveNote(),
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
		&cli.StringSliceFlag{Name: "export", Usage: "export a file or block device: `NAME=PATH`[,ro][,direct][,load][,ksm][,raw][,cow=OVERLAY|,snapshot][,tls-only][,allow=CIDR]...[,tls-allow=NAME]...[,description=TEXT] (repeatable; cow=OVERLAY: a copy-on-write clone of PATH whose writes go to OVERLAY, created if absent; snapshot: a throw-away clone; description takes the rest, so comes last; a comma in a path is written ,,)", EnvVars: []string{"NBDD_EXPORT"}},
		&cli.StringSliceFlag{Name: "memory", Usage: "export memory: `NAME=SIZE`[,ro][,ksm][,prealloc][,tls-only][,allow=CIDR]...[,tls-allow=NAME]...[,description=TEXT] (repeatable; description last; prealloc holds the whole size from the start, so that first writes cost no page faults)", EnvVars: []string{"NBDD_MEMORY"}},
		&cli.StringSliceFlag{Name: "s3", Usage: "export an image in S3, or a sealed snapshot of one (read-only): `NAME=s3://BUCKET/PREFIX[@SNAPSHOT]`[,ro][,takeover][,journal=DIR][,cache=SIZE][,dirty=SIZE][,flush-timeout=DURATION][,addressing=auto|path|virtual][,tls-only][,description=TEXT] (repeatable; endpoint and credentials from the AWS environment; see docs/s3.md)", EnvVars: []string{"NBDD_S3"}},
		&cli.StringFlag{Name: "s3-cache-dir", Usage: "keep S3 exports' journals under `DIR` (default: the user cache directory, nbdd/s3)", EnvVars: []string{s3CacheDirEnv}},
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
		&cli.IntFlag{Name: "max-connections", Value: defaultMaxConnections, Usage: "connections server-wide (0: no limit)", EnvVars: []string{"NBDD_MAX_CONNECTIONS"}},
		&cli.IntFlag{Name: "max-backend-calls", Value: server.DefaultMaxBackendCalls, Usage: "backend calls running at once on their own goroutines, server-wide (0: no limit)", EnvVars: []string{"NBDD_MAX_BACKEND_CALLS"}},
		&cli.IntFlag{Name: "max-connections-per-host", Value: defaultMaxConnectionsPerHost, Usage: "connections per client IP address; unix-socket clients count only toward --max-connections (0: no limit)", EnvVars: []string{"NBDD_MAX_CONNECTIONS_PER_HOST"}},
		&cli.BoolFlag{Name: "no-structured-replies", Usage: "refuse structured replies and extended headers, so every reply is simple (like nbdkit --no-sr); clients lose sparse reads, block status, error messages and 64-bit lengths", EnvVars: []string{"NBDD_NO_STRUCTURED_REPLIES"}},
		&cli.BoolFlag{Name: "no-idle-poll", Usage: "never poll an idle connection's socket for its next request (by default, after a request of at most 1 MiB with none in flight, nbdd polls for up to 30µs before sleeping, while such polls find the next request: twice the IOPS at queue depth 1 on a virtual machine, for some CPU)", EnvVars: []string{"NBDD_NO_IDLE_POLL"}},
		&cli.StringFlag{Name: "socket-mode", Value: "0660", Usage: "permissions of unix sockets", EnvVars: []string{"NBDD_SOCKET_MODE"}},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"NBDD_LOG_LEVEL"}},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text (key=value) or json (one object a line), on stderr", EnvVars: []string{"NBDD_LOG_FORMAT"}},
		&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile to `FILE` until nbdd exits", EnvVars: []string{"NBDD_CPUPROFILE"}, Hidden: true},
		&cli.StringFlag{Name: "fault", Usage: "FOR TESTING: make every export fail as `SPEC` says, e.g. read:0-4K:eio,sync:enospc (OP[:RANGE][:ERRNO|short|delay=D]...); nbdd warns at start while it is set", EnvVars: []string{"NBDD_FAULT"}},
	}, append(append(append(append(tlsFlags(), accessFlags()...), ksmFlags()...), serviceFlags()...), metricsFlag())...)
}

// serve runs the server until a signal: the first SIGINT, SIGTERM or SIGHUP
// shuts down gracefully within --shutdown-timeout, a second exits at once.
func serve(c *cli.Context) error {
	if c.NArg() > 0 {
		return usage("serve takes no arguments (got %q); use --export, --memory or --s3", c.Args().First())
	}
	logger, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return usage("%v", err)
	}
	if c.Bool("exit-with-parent") {
		if err := exitWithParent(); err != nil {
			return err
		}
	}
	if path := c.String("cpuprofile"); path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--cpuprofile: %v", err), 2)
		}
		defer stop()
	}
	if err := checkKSMFlags(c); err != nil {
		return err
	}
	cfg, err := buildServer(c, logger)
	if err != nil {
		return err
	}
	defer cfg.close()
	// The sockets listen before the exports open (an S3 image takes a few
	// round trips): a client that connects meanwhile waits in the
	// kernel's backlog for its greeting, instead of being refused and
	// trying again later.
	listeners, cleanup, err := openListeners(c, cfg.srv.TLSMode != server.TLSOff, logger)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := cfg.exports(c); err != nil {
		closeListeners(listeners)
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
	stopMetrics, err := startMetrics(c, cfg, k, logger)
	if err != nil {
		return err
	}
	defer stopMetrics()
	removePidfile, err := writePidfile(c.String("pidfile"))
	if err != nil {
		return err
	}
	defer removePidfile()
	var cp *captive
	var quit <-chan struct{}
	if script := c.String("run"); script != "" {
		if cp, err = startCaptive(script, cfg.srv, listeners); err != nil {
			return err
		}
		defer cp.stop()
		quit = cp.done
	}
	err = runUntilSignal(cfg.srv, listeners, c.Duration("shutdown-timeout"), logger, runHooks{
		quit: quit,
		ready: func() {
			if cp == nil { // in captive mode stdout is the command's
				announce(c, cfg, listeners)
			}
			notify(logger, daemon.SdNotifyReady+"\nSTATUS="+statusLine(cfg, listeners))
		},
		onSignal: func() {
			notify(logger, daemon.SdNotifyStopping+"\nSTATUS=shutting down")
			if err := stopKSM(); err != nil {
				logger.Error("restoring the KSM settings", "err", err)
			}
		},
	})
	if err := errors.Join(err, stopKSM()); err != nil || cp == nil {
		return err
	}
	cp.stop()
	if st := cp.status(); st != 0 {
		return cli.Exit("", st) // the command's own status; it has said why
	}
	return nil
}

// openListeners opens the sockets nbdd serves on: those a service manager
// passed (socket activation) and every --listen; with neither, a private
// socket for --run, or the default address.
func openListeners(c *cli.Context, tls bool, logger *slog.Logger) ([]*listener, func(), error) {
	activated, err := activatedListeners()
	if err != nil {
		return nil, nil, err
	}
	for _, l := range activated {
		warnIfExposed(l, tls, logger)
		logger.Info("serving a socket passed by the service manager", "name", strings.TrimPrefix(l.url, "activated:"), "addr", l.addr)
	}
	urls, cleanup := c.StringSlice("listen"), func() {}
	switch {
	case len(urls) > 0 || len(activated) > 0:
	case c.String("run") != "":
		var u string
		if u, cleanup, err = privateSocket(); err != nil {
			return nil, nil, err
		}
		urls = []string{u}
	default:
		urls = []string{defaultListen}
	}
	ls, err := listenAll(urls, c.String("socket-mode"), tls, logger)
	if err != nil {
		closeListeners(activated)
		cleanup()
		return nil, nil, err
	}
	return append(activated, ls...), cleanup, nil
}

// statusLine is the one-line status a service manager shows.
func statusLine(cfg *config, listeners []*listener) string {
	n := fmt.Sprintf("%d exports", len(cfg.srv.Exports))
	if cfg.dir != "" {
		n += " and the files of " + cfg.dir
	}
	return fmt.Sprintf("serving %s on %d sockets", n, len(listeners))
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// announce prints where each export can be reached, as NBD URIs
// (github.com/NetworkBlockDevice/nbd doc/uri.md).
func announce(c *cli.Context, cfg *config, listeners []*listener) {
	for _, e := range cfg.srv.Exports {
		size, _ := e.Backend.Size()
		for _, l := range listeners {
			tls := cfg.srv.TLSMode == server.TLSRequire || e.TLSOnly
			fmt.Fprintf(c.App.Writer, "nbdd: export %q (%s%s%s) at %s\n", e.Name, formatSize(size), roSuffix(e.ReadOnly), faultSuffix(cfg.faultSpec), l.uri(e.Name, tls))
		}
	}
	if cfg.dir != "" {
		for _, l := range listeners {
			fmt.Fprintf(c.App.Writer, "nbdd: files of %s at %s\n", cfg.dir, l.uri("FILENAME", cfg.srv.TLSMode == server.TLSRequire))
		}
	}
}

// faultsActiveNote warns in nbdd serve --help that NBDD_FAULT is set: a
// value left in the environment would make every export fail on purpose.
func faultsActiveNote() string {
	if spec := os.Getenv("NBDD_FAULT"); spec != "" {
		return fmt.Sprintf("\n\nWARNING: NBDD_FAULT=%s is set in this environment: nbdd serve would inject those faults into every export.", quoteShort(spec))
	}
	return ""
}

func faultSuffix(spec string) string {
	if spec != "" {
		return ", FAULTS INJECTED"
	}
	return ""
}

func roSuffix(ro bool) string {
	if ro {
		return ", read-only"
	}
	return ""
}

// runHooks are what runUntilSignal calls besides serving.
type runHooks struct {
	quit     <-chan struct{} // closed: shut down as on a signal (nil: never)
	ready    func()          // once signals are handled and serving began
	onSignal func()          // when the shutdown begins
}

// runUntilSignal serves on listeners until a signal or until h.quit is
// closed, then runs h.onSignal and shuts srv down gracefully.
func runUntilSignal(srv *server.Server, listeners []*listener, timeout time.Duration, logger *slog.Logger, h runHooks) error {
	sigs := make(chan os.Signal, 2)
	// SIGHUP too: a closed terminal must not lose unflushed writes.
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
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
	h.ready()
	select {
	case err := <-errs:
		srv.Close()
		return err
	case sig := <-sigs:
		logger.Info("shutting down", "signal", sig.String(), "timeout", timeout)
	case <-h.quit:
		logger.Info("shutting down: the --run command exited", "timeout", timeout)
	}
	h.onSignal()
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
