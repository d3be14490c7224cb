package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
)

// Sentinel errors.
var (
	// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrShutdown is the cause of requests refused because the server is
	// shutting down; it maps to NBD_ESHUTDOWN.
	ErrShutdown = errors.New("nbd: server shutting down")
	// errAbort ends a handshake that the client aborted; it is not logged
	// as a failure.
	errAbort = errors.New("nbd: client aborted the handshake")
	// errDisconnect ends a transmission after NBD_CMD_DISC.
	errDisconnect = errors.New("nbd: client disconnected")
)

// protocolError is a framing violation: the byte stream can no longer be
// trusted, so the connection is closed without a reply (proto.md "Error
// values": a server "MUST initiate a hard disconnect" when it cannot parse
// the request stream).
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "nbd: protocol violation: " + e.msg }

func violation(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// requestError is answered on the wire; the connection survives.
type requestError struct {
	errno protocol.Errno
	err   error // cause, for logs and structured error messages
}

func (e *requestError) Error() string { return fmt.Sprintf("%v: %v", e.errno, e.err) }
func (e *requestError) Unwrap() error { return e.err }

func reject(errno protocol.Errno, format string, args ...any) *requestError {
	return &requestError{errno: errno, err: fmt.Errorf(format, args...)}
}

// clientMessage is err's text as an error chunk carries it to the client
// (proto.md "Structured reply chunk message types": "a human-readable
// error string"), with the host's file paths left out: an *fs.PathError
// names the file behind the export, which is the server's business, not
// the client's. The operation and the cause stay. The full text is logged.
func clientMessage(err error) string {
	msg := err.Error()
	for e := err; e != nil; {
		var pe *fs.PathError
		if !errors.As(e, &pe) {
			break
		}
		if pe.Path != "" { // only where PathError.Error put it: a short path may occur elsewhere
			msg = strings.Replace(msg, pe.Op+" "+pe.Path+": ", pe.Op+" (export file): ", 1)
		}
		e = pe.Err
	}
	return msg
}

// Errno maps an error returned by a backend to the NBD error value sent to
// the client (proto.md "Error values"), in the manner of nbdkit's nbd_errno.
// Unknown errors become NBD_EIO; nil becomes 0.
func Errno(err error) protocol.Errno {
	var re *requestError
	switch {
	case err == nil:
		return protocol.EOK
	case errors.As(err, &re):
		return re.errno
	case errors.Is(err, backend.ErrReadOnly), errors.Is(err, fs.ErrPermission),
		errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return protocol.EPERM
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return protocol.ENOSPC
	case errors.Is(err, backend.ErrNotFast), errors.Is(err, syscall.ENOTSUP), errors.Is(err, errors.ErrUnsupported):
		return protocol.ENOTSUP
	case errors.Is(err, backend.ErrOutOfRange), errors.Is(err, syscall.EINVAL):
		return protocol.EINVAL
	case errors.Is(err, syscall.ENOMEM):
		return protocol.ENOMEM
	case errors.Is(err, syscall.EOVERFLOW):
		return protocol.EOVERFLOW
	case errors.Is(err, ErrShutdown), errors.Is(err, syscall.ESHUTDOWN), errors.Is(err, context.Canceled):
		return protocol.ESHUTDOWN
	default:
		return protocol.EIO
	}
}
