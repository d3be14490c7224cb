package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// listener is an open listening socket and the URL it came from.
type listener struct {
	net.Listener
	url     string
	network string
	addr    string
}

// uri is the NBD URI of export name on l (doc/uri.md in the nbd repository).
func (l *listener) uri(name string, tls bool) string {
	scheme := "nbd"
	if tls {
		scheme = "nbds" // doc/uri.md: the client must use TLS
	}
	if l.network == "unix" {
		return scheme + "+unix:///" + url.PathEscape(name) + "?socket=" + l.socketPath()
	}
	return scheme + "://" + l.Addr().String() + "/" + url.PathEscape(name)
}

// socketPath is the absolute path of a unix listener's socket, for
// clients that may run in another directory.
func (l *listener) socketPath() string {
	if path, err := filepath.Abs(l.addr); err == nil {
		return path
	}
	return l.addr
}

// listenAll opens a listener for each URL, unix sockets with mode.
func listenAll(urls []string, socketMode string, tls bool, logger *slog.Logger) ([]*listener, error) {
	mode, err := parseSocketMode(socketMode)
	if err != nil {
		return nil, err
	}
	if err := checkListedOnce(urls); err != nil {
		return nil, err
	}
	var ls []*listener
	for _, u := range urls {
		l, err := listen("--listen", u, mode)
		if err != nil {
			for _, o := range ls {
				o.Close()
			}
			return nil, err
		}
		warnIfExposed(l, tls, logger)
		ls = append(ls, l)
	}
	return ls, nil
}

// parseSocketMode parses --socket-mode.
func parseSocketMode(s string) (os.FileMode, error) {
	mode, err := strconv.ParseUint(s, 8, 32)
	if err != nil || mode > 0o777 {
		return 0, usage("--socket-mode %q: want an octal mode such as 0660", s)
	}
	return os.FileMode(mode), nil
}

// listen opens the socket raw that flag (--listen, --metrics) names; a
// unix socket gets mode.
func listen(flag, raw string, mode os.FileMode) (*listener, error) {
	network, addr, err := parseListenURL(raw)
	if err != nil {
		return nil, usage("%s %q: %v", flag, raw, err)
	}
	if network == "unix" {
		if err := removeStaleSocket(addr); err != nil {
			return nil, cli.Exit(fmt.Sprintf("%s %s: %v", flag, raw, err), 1)
		}
	}
	nl, err := net.Listen(network, addr)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("%s %s: %v", flag, raw, err), 1)
	}
	if network == "unix" {
		nl.(*net.UnixListener).SetUnlinkOnClose(true)
		if err := os.Chmod(addr, mode); err != nil {
			nl.Close()
			return nil, cli.Exit(fmt.Sprintf("%s %s: %v", flag, raw, err), 1)
		}
	}
	return &listener{Listener: nl, url: raw, network: network, addr: addr}, nil
}

// checkListedOnce refuses a socket listed twice, which would otherwise
// fail as "in use by a running server" (the first listener) or "address
// already in use". TCP port 0 may repeat: each is a port of its own.
func checkListedOnce(urls []string) error {
	seen := map[string]string{}
	for _, u := range urls {
		network, addr, err := parseListenURL(u)
		if err != nil {
			continue // reported by listen
		}
		key := network + " " + addr
		if network == "unix" {
			if abs, err := filepath.Abs(addr); err == nil {
				key = network + " " + abs
			}
		} else if _, port, _ := net.SplitHostPort(addr); port == "0" {
			continue
		}
		if first, ok := seen[key]; ok {
			return usage("--listen %s and --listen %s are the same socket: list it once", first, u)
		}
		seen[key] = u
	}
	return nil
}

// parseListenURL accepts tcp://HOST:PORT, unix:///PATH, unix:PATH (a
// relative path too, as qemu spells it), and a bare HOST:PORT as TCP.
func parseListenURL(raw string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(raw, "unix:"):
		path := strings.TrimPrefix(strings.TrimPrefix(raw, "unix:"), "//")
		if path == "" {
			return "", "", errors.New("missing socket path")
		}
		return "unix", path, nil
	case strings.HasPrefix(raw, "tcp://"):
		raw = strings.TrimPrefix(raw, "tcp://")
	case strings.Contains(raw, "://"):
		return "", "", errors.New("want tcp://HOST:PORT, unix:///PATH or unix:PATH")
	}
	if _, _, err := net.SplitHostPort(raw); err != nil {
		return "", "", fmt.Errorf("want HOST:PORT: %v", err)
	}
	return "tcp", raw, nil
}

// removeStaleSocket deletes a socket file left by a dead server, and
// refuses to touch one a live server answers on, or a file that is not a
// socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by a running server", path)
	}
	return os.Remove(path)
}

// warnIfExposed warns of a TCP listener beyond this machine without TLS.
func warnIfExposed(l *listener, tls bool, logger *slog.Logger) {
	if l.network == "tcp" && !tls && !isLoopback(hostOf(l.addr)) {
		logger.Warn("listening beyond this machine without TLS: anyone who can reach it can read and write the exports", "listen", l.url)
	}
}

func hostOf(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	return host
}
