package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/ksm"
	"github.com/urfave/cli/v2"
)

func ksmFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "ksm", Usage: "run the KSM throttler: merge duplicate pages of ksm exports quickly, then let KSM idle", EnvVars: []string{"NBDD_KSM"}},
		&cli.StringFlag{Name: "ksm-policy", Value: "rate", Usage: "rate (pages_to_scan from mergeable bytes) or advisor (the kernel's scan-time advisor)", EnvVars: []string{"NBDD_KSM_POLICY"}},
		&cli.StringFlag{Name: "ksm-watch", Usage: "kick the throttler when images appear in `DIR` (inotify)", EnvVars: []string{"NBDD_KSM_WATCH"}},
		&cli.StringFlag{Name: "ksm-socket", Usage: "serve the throttler's control socket (kick, status) at `PATH`", EnvVars: []string{"NBDD_KSM_SOCKET"}},
		&cli.StringFlag{Name: "ksm-state-file", Value: ksm.DefaultStateFile, Usage: "where the original KSM settings are kept while tuned", EnvVars: []string{"NBDD_KSM_STATE_FILE"}},
		&cli.StringFlag{Name: "ksm-root", Value: ksm.DefaultRoot, Usage: "KSM sysfs directory", EnvVars: []string{"NBDD_KSM_ROOT"}, Hidden: true},
	}
}

// ksmRunner is the throttler and the goroutines feeding it.
type ksmRunner struct {
	t      *ksm.Throttler
	unlock func() // the state file's lock
	cancel context.CancelFunc
	done   chan error
	sigs   chan os.Signal
}

// checkKSMFlags refuses the throttler's settings without --ksm, where
// they would be ignored, and a policy that does not exist, whether or not
// --ksm is given.
func checkKSMFlags(c *cli.Context) error {
	if _, err := ksm.ParsePolicy(c.String("ksm-policy")); err != nil {
		return usage("--ksm-policy: %v", err)
	}
	if c.Bool("ksm") {
		return nil
	}
	for _, f := range []string{"ksm-policy", "ksm-watch", "ksm-socket", "ksm-state-file"} {
		if c.IsSet(f) {
			return usage("--%s needs --ksm", f)
		}
	}
	return nil
}

// startKSM starts the throttler when --ksm is set, registers the mergeable
// exports and kicks it for them: their pages were just loaded and are
// waiting to be merged.
func startKSM(c *cli.Context, cfg *config, logger *slog.Logger) (*ksmRunner, error) {
	if !c.Bool("ksm") {
		return nil, nil
	}
	policy, err := ksm.ParsePolicy(c.String("ksm-policy"))
	if err != nil {
		return nil, usage("--ksm-policy: %v", err)
	}
	t, err := ksm.New(ksm.Config{Store: ksm.Dir{Root: c.String("ksm-root")}, Logger: logger.With("component", "ksm"), Policy: policy, StateFile: c.String("ksm-state-file")})
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--ksm: %v", err), 1)
	}
	unlock, err := ksm.LockStateFile(c.String("ksm-state-file"))
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--ksm: %v", err), 1)
	}
	// The control socket and the watched directory fail here, not in
	// the log after nbdd has started.
	var sock net.Listener
	if path := c.String("ksm-socket"); path != "" {
		if sock, err = ksm.ListenSocket(path); err != nil {
			unlock()
			return nil, cli.Exit(fmt.Sprintf("--ksm-socket: %v", err), 1)
		}
	}
	if dir := c.String("ksm-watch"); dir != "" {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			if sock != nil {
				sock.Close()
			}
			unlock()
			return nil, usage("--ksm-watch %s: not a directory", dir)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &ksmRunner{t: t, unlock: unlock, cancel: cancel, done: make(chan error, 1), sigs: make(chan os.Signal, 1)}
	go func() { r.done <- t.Run(ctx) }()
	r.feed(ctx, c, sock, logger)
	for _, e := range cfg.srv.Exports {
		if m, ok := e.Backend.(*backend.Mapped); ok && cfg.mergeable[e.Name] {
			t.RegisterMapping(e.Name, m.Base(), uintptr(m.Len()))
			size, _ := m.Size()
			t.ExportOpened(e.Name, size)
		}
	}
	for name, m := range cfg.mergeableBases() { // once per base, however many clones
		t.RegisterMapping(name, m.Base(), uintptr(m.Len()))
		size, _ := m.Size()
		t.ExportOpened(name, size)
	}
	return r, nil
}

// feed starts the optional event sources: SIGUSR1, inotify and the
// control socket (sock, if not nil).
func (r *ksmRunner) feed(ctx context.Context, c *cli.Context, sock net.Listener, logger *slog.Logger) {
	signal.Notify(r.sigs, syscall.SIGUSR1)
	go func() {
		for range r.sigs {
			logger.Info("SIGUSR1: kicking the KSM throttler")
			r.t.Kick()
		}
	}()
	if dir := c.String("ksm-watch"); dir != "" {
		go func() {
			if err := ksm.WatchDir(ctx, dir, r.t.Send); err != nil {
				logger.Error("KSM directory watch stopped", "dir", dir, "err", err)
			}
		}()
	}
	if sock != nil {
		go func() {
			if err := ksm.Serve(ctx, sock, r.t); err != nil {
				logger.Error("KSM control socket stopped", "path", sock.Addr().String(), "err", err)
			}
		}()
	}
}

// stop restores the host's KSM settings and waits for that to finish.
func (r *ksmRunner) stop(cfg *config) error {
	if r == nil {
		return nil
	}
	signal.Stop(r.sigs)
	close(r.sigs)
	for name := range cfg.mergeable {
		r.t.ExportClosed(name)
	}
	for name := range cfg.mergeableBases() {
		r.t.ExportClosed(name)
	}
	r.cancel()
	select {
	case err := <-r.done:
		r.unlock()
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	case <-time.After(10 * time.Second):
		return errors.New("KSM throttler did not restore the settings within 10s")
	}
}

func ksmCommand() *cli.Command {
	socketFlag := &cli.StringFlag{Name: "socket", Usage: "a running nbdd's --ksm-socket `PATH`", EnvVars: []string{"NBDD_KSM_SOCKET"}}
	return &cli.Command{
		Name:  "ksm",
		Usage: "inspect and kick the KSM throttler",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usage("ksm: unknown command %q (commands: status, kick)", c.Args().First())
			}
			return cli.ShowSubcommandHelp(c)
		},
		Subcommands: []*cli.Command{{
			Name:  "status",
			Usage: "print the KSM knobs, counters, the throttler's state and per-export merged bytes",
			Flags: []cli.Flag{
				socketFlag,
				&cli.BoolFlag{Name: "json", Usage: "print the status as JSON (the control socket's status reply)"},
				&cli.StringFlag{Name: "ksm-root", Value: ksm.DefaultRoot, Hidden: true},
			},
			Action:       ksmStatus,
			OnUsageError: usageError,
		}, {
			Name:         "kick",
			Usage:        "make a running throttler scan at full rate now (as SIGUSR1 does)",
			ArgsUsage:    "[REASON]",
			Flags:        []cli.Flag{socketFlag},
			Action:       ksmKick,
			OnUsageError: usageError,
		}},
	}
}

func ksmStatus(c *cli.Context) error {
	if c.NArg() > 0 {
		return usage("ksm status takes no arguments (got %q)", c.Args().First())
	}
	var st ksm.Status
	var err error
	if path := c.String("socket"); path != "" {
		ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
		defer cancel()
		st, err = ksm.QueryStatus(ctx, path)
	} else {
		st, err = ksm.ReadStatus(ksm.Dir{Root: c.String("ksm-root")})
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("ksm status: %v", err), 1)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return st.Print(c.App.Writer)
}

// ksmKick sends "kick" to a running nbdd's control socket.
func ksmKick(c *cli.Context) error {
	path := c.String("socket")
	if path == "" {
		return usage("ksm kick needs --socket PATH (a running nbdd --ksm --ksm-socket PATH); or send that nbdd SIGUSR1")
	}
	if c.NArg() > 1 {
		return usage("ksm kick takes at most one REASON (got %d arguments)", c.NArg())
	}
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
	defer cancel()
	if _, err := ksm.Call(ctx, path, strings.TrimSpace("kick "+c.Args().First())); err != nil {
		return cli.Exit(fmt.Sprintf("ksm kick: %v", err), 1)
	}
	fmt.Fprintln(c.App.Writer, "nbdd: KSM throttler kicked")
	return nil
}
