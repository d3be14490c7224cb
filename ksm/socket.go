package ksm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// DefaultSocket is the conventional path of the control socket (--ksm-socket).
const DefaultSocket = "/run/nbdd/ksm.sock"

// Controller is what the control socket drives; *Throttler implements it.
type Controller interface {
	Send(Event)
	Status() Status
}

// connIdle bounds how long a control connection may sit without a command.
const connIdle = 30 * time.Second

// maxLine bounds a command line of the control socket.
const maxLine = 4096

// ListenSocket listens on the unix socket path with mode 0660. A stale socket
// (one nobody accepts on) is replaced; a live one, or another kind of file, is
// an error.
func ListenSocket(path string) (*net.UnixListener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("ksm: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("ksm: %w", err)
	}
	return l, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ksm: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("ksm: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("ksm: %s is in use by another process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("ksm: probe %s: %w", path, err)
	}
	return os.Remove(path)
}

// ServeSocket listens on path (see ListenSocket) and serves the control
// protocol (see Serve) until ctx is done; then it removes the socket.
func ServeSocket(ctx context.Context, path string, c Controller) error {
	l, err := ListenSocket(path)
	if err != nil {
		return err
	}
	return Serve(ctx, l, c)
}

// Serve answers the line protocol of the control socket on l until ctx is
// done, then closes l (which unlinks a socket made by ListenSocket) and
// returns nil:
//
//	kick [reason]  → ok
//	status         → one line of JSON (Status)
//	anything else  → error: ...
//
// A connection may send several commands. The socket is passive: nothing is
// sent unasked.
func Serve(ctx context.Context, l net.Listener, c Controller) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	var backoff time.Duration
	for {
		conn, err := l.Accept()
		switch {
		case err == nil:
			backoff = 0
			go serveConn(ctx, conn, c)
		case ctx.Err() != nil:
			return nil
		case temporaryAcceptError(err):
			// Out of descriptors or memory for a moment: wait and go on,
			// as net/http does, instead of closing the socket for good.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
		default:
			return fmt.Errorf("ksm: accept: %w", err)
		}
	}
}

// temporaryAcceptError reports whether accept failed for want of a
// resource that may come back.
func temporaryAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func serveConn(ctx context.Context, conn net.Conn, c Controller) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 0, 256), maxLine)
	for conn.SetDeadline(time.Now().Add(connIdle)) == nil && sc.Scan() {
		if _, err := conn.Write([]byte(reply(sc.Text(), c) + "\n")); err != nil {
			return
		}
	}
}

// reply executes one command line and returns the answer without a newline.
func reply(line string, c Controller) string {
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch cmd {
	case "kick":
		c.Send(Event{Kind: EventKick, Name: strings.TrimSpace(arg)})
		return "ok"
	case "status":
		if arg != "" {
			return "error: status takes no argument"
		}
		b, err := json.Marshal(c.Status())
		if err != nil {
			return "error: " + err.Error()
		}
		return string(b)
	case "":
		return "error: empty command (want kick or status)"
	}
	return fmt.Sprintf("error: unknown command %q (want kick or status)", cmd)
}

// Call sends one command line to the control socket at path and returns the
// reply line; a reply starting with "error: " is returned as an error.
func Call(ctx context.Context, path, command string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return "", fmt.Errorf("ksm: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := conn.Write([]byte(command + "\n")); err != nil {
		return "", fmt.Errorf("ksm: %w", err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("ksm: read reply: %w", err)
	}
	line = strings.TrimSuffix(line, "\n")
	if msg, ok := strings.CutPrefix(line, "error: "); ok {
		return "", fmt.Errorf("ksm: %s", msg)
	}
	return line, nil
}

// QueryStatus asks the throttler behind the control socket at path for its Status.
func QueryStatus(ctx context.Context, path string) (Status, error) {
	var s Status
	line, err := Call(ctx, path, "status")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return s, fmt.Errorf("ksm: status reply: %w", err)
	}
	return s, nil
}
