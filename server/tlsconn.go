package server

import (
	"io"
	"net"
	"time"
)

// rwcConn lets crypto/tls run over a plain io.ReadWriteCloser, for
// ServeConn callers that do not hand in a net.Conn.
type rwcConn struct{ io.ReadWriteCloser }

type noAddr struct{}

func (noAddr) Network() string { return "rwc" }
func (noAddr) String() string  { return "rwc" }

func (rwcConn) LocalAddr() net.Addr              { return noAddr{} }
func (rwcConn) RemoteAddr() net.Addr             { return noAddr{} }
func (rwcConn) SetDeadline(time.Time) error      { return nil }
func (rwcConn) SetReadDeadline(time.Time) error  { return nil }
func (rwcConn) SetWriteDeadline(time.Time) error { return nil }
