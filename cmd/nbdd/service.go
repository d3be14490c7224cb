package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

// serviceFlags integrate nbdd with service managers and scripts, as
// nbdkit's do (nbdkit-captive(1), nbdkit-service(1)).
func serviceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "pidfile", Usage: "write nbdd's pid to `FILE` once it listens; removed on exit", EnvVars: []string{"NBDD_PIDFILE"}},
		&cli.StringFlag{Name: "run", Usage: "captive mode: serve on a private unix socket (unless --listen is given), run `CMD` with /bin/sh with $uri (also $nbd), $unixsocket, $port, $tls and $exportname set, and exit with its status when it ends", EnvVars: []string{"NBDD_RUN"}},
		&cli.BoolFlag{Name: "exit-with-parent", Usage: "shut down when the process that started nbdd exits (Linux PR_SET_PDEATHSIG)", EnvVars: []string{"NBDD_EXIT_WITH_PARENT"}},
	}
}

// exitWithParent asks the kernel to send SIGTERM, which shuts down
// gracefully, when nbdd's parent exits. A parent that exited before the
// request is caught by comparing the parent pid before and after.
func exitWithParent() error {
	parent := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0); err != nil {
		return cli.Exit(fmt.Sprintf("--exit-with-parent: %v", err), 1)
	}
	if os.Getppid() != parent {
		return cli.Exit("--exit-with-parent: the parent process has already exited", 1)
	}
	return nil
}

// activatedListeners are the sockets a service manager passed
// (sd_listen_fds(3): LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), which the
// environment of commands nbdd runs no longer names.
func activatedListeners() ([]*listener, error) {
	var ls []*listener
	for _, f := range activation.Files(true) {
		nl, err := net.FileListener(f)
		name := f.Name()
		f.Close()
		if err != nil {
			closeListeners(ls)
			return nil, cli.Exit(fmt.Sprintf("socket activation: %s (fd %d) is not a listening socket: %v", name, f.Fd(), err), 1)
		}
		l := &listener{Listener: nl, url: "activated:" + name, network: nl.Addr().Network(), addr: nl.Addr().String()}
		if l.network != "unix" && l.network != "tcp" {
			nl.Close()
			closeListeners(ls)
			return nil, cli.Exit(fmt.Sprintf("socket activation: %s is a %s socket; nbdd serves unix and tcp stream sockets", name, l.network), 1)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func closeListeners(ls []*listener) {
	for _, l := range ls {
		l.Close()
	}
}

// notify sends state to the service manager (sd_notify(3): READY=1,
// STOPPING=1), if one asked for it with NOTIFY_SOCKET; a failure is
// logged, never fatal.
func notify(logger *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		logger.Warn("cannot notify the service manager", "state", strings.ReplaceAll(state, "\n", " "), "err", err)
	}
}

// writePidfile writes nbdd's pid to path, through a temporary file so
// that a reader never sees it half written, and returns a function that
// removes it.
func writePidfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, cli.Exit(fmt.Sprintf("--pidfile: %v", err), 1)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return nil, cli.Exit(fmt.Sprintf("--pidfile: %v", err), 1)
	}
	return func() { os.Remove(path) }, nil
}

// privateSocket makes a directory only nbdd's user may enter, for the
// socket of captive mode, and returns the listen URL and a function that
// removes the directory.
func privateSocket() (string, func(), error) {
	base := os.TempDir()
	if len(base) > 64 { // unix socket paths hold 107 bytes
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "nbdd-run-")
	if err != nil {
		return "", nil, cli.Exit(fmt.Sprintf("--run: %v", err), 1)
	}
	return "unix://" + filepath.Join(dir, "sock"), func() { os.RemoveAll(dir) }, nil
}

// captive is the command of --run.
type captive struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the command has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// startCaptive runs script with /bin/sh, with nbdkit's --run variables
// naming the default export on the first listener (a unix socket if there
// is one).
func startCaptive(script string, srv *server.Server, listeners []*listener) (*captive, error) {
	l := listeners[0]
	for _, o := range listeners {
		if o.network == "unix" {
			l = o
			break
		}
	}
	name := srv.DefaultExport
	if name == "" && len(srv.Exports) == 1 {
		name = srv.Exports[0].Name
	}
	uri := l.uri(name, srv.TLSMode == server.TLSRequire)
	vars := map[string]string{"uri": uri, "nbd": uri, "exportname": name, "unixsocket": "", "port": "", "tls": ""}
	if l.network == "unix" {
		vars["unixsocket"] = l.socketPath()
	} else if _, port, err := net.SplitHostPort(l.Addr().String()); err == nil {
		vars["port"] = port
	}
	if srv.TLSMode != server.TLSOff {
		vars["tls"] = strconv.Itoa(int(srv.TLSMode)) // nbdkit: 1 for on, 2 for require
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = captiveEnv(os.Environ(), vars)
	if err := cmd.Start(); err != nil {
		return nil, cli.Exit(fmt.Sprintf("--run: %v", err), 1)
	}
	cp := &captive{cmd: cmd, done: make(chan struct{})}
	go func() {
		cp.err = cmd.Wait()
		close(cp.done)
	}()
	return cp, nil
}

// captiveEnv is env without what was meant for nbdd alone (the service
// manager's notification socket), with vars added.
func captiveEnv(env []string, vars map[string]string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ours := vars[k]; ours || k == "NOTIFY_SOCKET" {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	return out
}

// status is the command's exit status as a shell reports it: its code,
// or 128 plus the signal that killed it.
func (cp *captive) status() int {
	var ee *exec.ExitError
	if !errors.As(cp.err, &ee) {
		if cp.err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}

// stop asks a command still running to end (SIGTERM) and waits for it.
func (cp *captive) stop() {
	select {
	case <-cp.done:
		return
	default:
	}
	cp.cmd.Process.Signal(syscall.SIGTERM)
	<-cp.done
}
