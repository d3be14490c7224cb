package server

import (
	"fmt"
	"log/slog"
	"net"

	"golang.org/x/sys/unix"
)

// Peer is what the server knows of a client: its address, and for a unix
// socket the process credentials the kernel recorded when it connected
// (SO_PEERCRED, unix(7)).
type Peer struct {
	// Addr is the client's address; nil when the connection has none
	// (ServeConn on a pipe).
	Addr net.Addr
	// Unix is set for unix-socket peers; PID, UID and GID are then valid
	// when Creds is true.
	Unix          bool
	Creds         bool
	PID, UID, GID int
}

// peerOf returns what the connection tells of its client.
func peerOf(nc net.Conn) Peer {
	if nc == nil {
		return Peer{}
	}
	p := Peer{Addr: nc.RemoteAddr()}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return p
	}
	p.Unix = true
	raw, err := uc.SyscallConn()
	if err != nil {
		return p
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil && cred != nil {
		p.Creds, p.PID, p.UID, p.GID = true, int(cred.Pid), int(cred.Uid), int(cred.Gid)
	}
	return p
}

// host is the key the peer counts under for Server.MaxConnsPerHost: its
// IP address, or "" for a unix-socket peer, which is not counted per host.
// Unix peers are local processes that passed the socket file's
// permissions, and the cases a local socket serves (hundreds of
// connections from one program, as in go-nbd issue 6, or the kernel
// client with hundreds of devices) come from one user, so counting them by
// uid would refuse exactly those; MaxConns still bounds them.
func (p Peer) host() string {
	if p.Unix || p.Addr == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}

// logAttrs are the attributes that name the peer in log lines: remote
// for a network address, pid and uid for a unix-socket peer (whose
// address is empty, "@").
func (p Peer) logAttrs() []any {
	switch {
	case p.Creds:
		return []any{slog.Int("pid", p.PID), slog.Int("uid", p.UID)}
	case p.Unix:
		return []any{slog.String("remote", "unix")}
	case p.Addr != nil:
		return []any{slog.String("remote", p.Addr.String())}
	}
	return nil
}

// String names the peer for messages: its address, or "pid P uid U".
func (p Peer) String() string {
	switch {
	case p.Creds:
		return fmt.Sprintf("pid %d uid %d", p.PID, p.UID)
	case p.Addr != nil && !p.Unix:
		return p.Addr.String()
	case p.Unix:
		return "a unix-socket peer"
	}
	return "a client"
}
