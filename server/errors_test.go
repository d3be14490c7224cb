package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
)

func TestErrno(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("pwrite at 4096: %w", err) }
	tests := []struct {
		err  error
		want protocol.Errno
	}{
		{nil, protocol.EOK},
		{fs.ErrPermission, protocol.EPERM},
		{&fs.PathError{Op: "open", Path: "/img", Err: syscall.EACCES}, protocol.EPERM},
		{syscall.EROFS, protocol.EPERM},
		{syscall.EPERM, protocol.EPERM},
		{backend.ErrReadOnly, protocol.EPERM},
		{syscall.ENOSPC, protocol.ENOSPC},
		{syscall.EDQUOT, protocol.ENOSPC},
		{syscall.EFBIG, protocol.ENOSPC},
		{backend.ErrNotFast, protocol.ENOTSUP},
		{syscall.ENOTSUP, protocol.ENOTSUP},
		{errors.ErrUnsupported, protocol.ENOTSUP},
		{backend.ErrOutOfRange, protocol.EINVAL},
		{syscall.EINVAL, protocol.EINVAL},
		{syscall.ENOMEM, protocol.ENOMEM},
		{syscall.EOVERFLOW, protocol.EOVERFLOW},
		{ErrShutdown, protocol.ESHUTDOWN},
		{syscall.ESHUTDOWN, protocol.ESHUTDOWN},
		{context.Canceled, protocol.ESHUTDOWN},
		{syscall.EIO, protocol.EIO},
		{io.ErrUnexpectedEOF, protocol.EIO},
		{io.ErrShortWrite, protocol.EIO},
		{errors.New("anything else"), protocol.EIO},
		// Wrapped, twice wrapped, joined: the cause decides.
		{wrap(syscall.ENOSPC), protocol.ENOSPC},
		{wrap(wrap(os.ErrPermission)), protocol.EPERM},
		{&os.PathError{Op: "write", Path: "/img", Err: syscall.EDQUOT}, protocol.ENOSPC},
		{errors.Join(errors.New("context"), backend.ErrNotFast), protocol.ENOTSUP},
		{wrap(ErrShutdown), protocol.ESHUTDOWN},
		// A request error keeps its own errno.
		{reject(protocol.EOVERFLOW, "too long"), protocol.EOVERFLOW},
		{wrap(reject(protocol.EPERM, "read-only")), protocol.EPERM},
	}
	for _, tt := range tests {
		if got := Errno(tt.err); got != tt.want {
			t.Errorf("Errno(%v): got %v; want %v", tt.err, got, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	const size = 1 << 20
	const maxReq = 64 << 10
	rw := &openExport{Export: &Export{Name: "rw"}, caps: caps{size: size, trimmer: backend.NewMemory(size)}}
	ro := &openExport{Export: &Export{Name: "ro"}, caps: caps{size: size, readOnly: true}}
	noTrim := &openExport{Export: &Export{Name: "notrim"}, caps: caps{size: size}}
	direct := &openExport{Export: &Export{Name: "direct"}, caps: caps{size: size, minBlock: 512}}
	fast := &openExport{Export: &Export{Name: "fast"}, caps: caps{size: size, fastZero: true}}
	req := func(typ protocol.Cmd, flags protocol.CmdFlag, off uint64, n uint32) protocol.Request {
		return protocol.Request{Type: typ, Flags: flags, Offset: off, Length: n}
	}
	const (
		ok        = protocol.EOK
		violation = protocol.Errno(1 << 31) // a connection-fatal protocolError
	)
	tests := []struct {
		name       string
		req        protocol.Request
		exp        *openExport
		structured bool
		meta       bool
		want       protocol.Errno
	}{
		{"read", req(protocol.CmdRead, 0, 0, 4096), rw, false, false, ok},
		{"read to the end", req(protocol.CmdRead, 0, size-1, 1), rw, false, false, ok},
		{"read max", req(protocol.CmdRead, 0, 0, maxReq), rw, false, false, ok},
		{"read FUA", req(protocol.CmdRead, protocol.CmdFlagFUA, 0, 1), rw, false, false, ok},
		{"read over max", req(protocol.CmdRead, 0, 0, maxReq+1), rw, false, false, protocol.EINVAL},
		{"read empty", req(protocol.CmdRead, 0, 0, 0), rw, false, false, protocol.EINVAL},
		{"read past end", req(protocol.CmdRead, 0, size, 1), rw, false, false, protocol.EINVAL},
		{"read straddling", req(protocol.CmdRead, 0, size-1, 2), rw, false, false, protocol.EINVAL},
		{"read offset wraps", req(protocol.CmdRead, 0, 1<<64-1, 2), rw, false, false, protocol.EINVAL},
		{"read DF simple", req(protocol.CmdRead, protocol.CmdFlagDF, 0, 1), rw, false, false, protocol.EINVAL},
		{"read DF structured", req(protocol.CmdRead, protocol.CmdFlagDF, 0, 1), rw, true, false, ok},
		{"read NO_HOLE", req(protocol.CmdRead, protocol.CmdFlagNoHole, 0, 1), rw, false, false, protocol.EINVAL},
		// A minimum block size binds READ and WRITE even for a client that
		// never asked for it: an error reply, not a failure half way.
		{"read aligned", req(protocol.CmdRead, 0, 512, 4096), direct, false, false, ok},
		{"read unaligned length", req(protocol.CmdRead, 0, 0, 4096+100), direct, false, false, protocol.EINVAL},
		{"read unaligned offset", req(protocol.CmdRead, 0, 100, 512), direct, false, false, protocol.EINVAL},
		{"write unaligned", req(protocol.CmdWrite, 0, 0, 4096+100), direct, false, false, protocol.EINVAL},
		{"write aligned", req(protocol.CmdWrite, 0, 4096, 1024), direct, false, false, ok},
		{"trim unaligned", req(protocol.CmdTrim, 0, 100, 100), &openExport{Export: &Export{}, caps: caps{size: size, minBlock: 512, trimmer: backend.NewMemory(size)}}, false, false, ok},
		{"read read-only", req(protocol.CmdRead, 0, 0, 1), ro, false, false, ok},
		{"write", req(protocol.CmdWrite, protocol.CmdFlagFUA, 0, 1), rw, false, false, ok},
		// Over the maximum but within 32 MiB: an error reply, the payload
		// drained; beyond both, a framing violation.
		{"write over max", req(protocol.CmdWrite, 0, 0, maxReq+1), rw, false, false, protocol.EINVAL},
		{"write over max read-only", req(protocol.CmdWrite, 0, 0, maxReq+1), ro, false, false, protocol.EPERM},
		{"write over 32 MiB", req(protocol.CmdWrite, 0, 0, protocol.DefaultMaxPayload+1), rw, false, false, violation},
		{"write over 32 MiB past end", req(protocol.CmdWrite, 0, size, protocol.DefaultMaxPayload+1), rw, false, false, violation},
		{"write over 32 MiB read-only", req(protocol.CmdWrite, 0, 0, protocol.DefaultMaxPayload+1), ro, false, false, violation},
		{"write past end", req(protocol.CmdWrite, 0, size, 1), rw, false, false, protocol.ENOSPC},
		{"write straddling", req(protocol.CmdWrite, 0, size-1, 2), rw, false, false, protocol.ENOSPC},
		{"write empty", req(protocol.CmdWrite, 0, 0, 0), rw, false, false, protocol.EINVAL},
		{"write read-only", req(protocol.CmdWrite, 0, 0, 1), ro, false, false, protocol.EPERM},
		{"write DF", req(protocol.CmdWrite, protocol.CmdFlagDF, 0, 1), rw, true, false, protocol.EINVAL},
		{"flush", req(protocol.CmdFlush, 0, 0, 0), rw, false, false, ok},
		{"flush read-only", req(protocol.CmdFlush, 0, 0, 0), ro, false, false, ok},
		{"flush NO_HOLE", req(protocol.CmdFlush, protocol.CmdFlagNoHole, 0, 0), rw, false, false, protocol.EINVAL},
		{"trim", req(protocol.CmdTrim, 0, 0, size), rw, false, false, ok},
		{"trim longer than max", req(protocol.CmdTrim, 0, 0, maxReq+1), rw, false, false, ok},
		{"trim unsupported", req(protocol.CmdTrim, 0, 0, 1), noTrim, false, false, protocol.EINVAL},
		{"trim read-only", req(protocol.CmdTrim, 0, 0, 1), ro, false, false, protocol.EPERM},
		{"trim past end", req(protocol.CmdTrim, 0, size, 1), rw, false, false, protocol.EINVAL},
		{"trim empty", req(protocol.CmdTrim, 0, 0, 0), rw, false, false, protocol.EINVAL},
		{"cache", req(protocol.CmdCache, 0, 0, size), rw, false, false, ok},
		{"cache empty", req(protocol.CmdCache, 0, size, 0), rw, false, false, ok},
		{"cache past end", req(protocol.CmdCache, 0, size, 1), rw, false, false, protocol.EINVAL},
		{"zero", req(protocol.CmdWriteZeroes, protocol.CmdFlagNoHole, 0, size), rw, false, false, ok},
		{"zero fast", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero, 0, size), fast, false, false, ok},
		{"zero fast no-hole", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero|protocol.CmdFlagNoHole, 0, 1), fast, false, false, protocol.ENOTSUP},
		// Not advertised: EINVAL, not ENOTSUP (proto.md "NBD_CMD_WRITE_ZEROES").
		{"zero fast not advertised", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero, 0, size), rw, false, false, protocol.EINVAL},
		{"zero fast read-only", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero|protocol.CmdFlagNoHole, 0, 1), ro, false, false, protocol.EPERM},
		{"zero past end", req(protocol.CmdWriteZeroes, 0, size, 1), rw, false, false, protocol.ENOSPC},
		{"zero read-only", req(protocol.CmdWriteZeroes, 0, 0, 1), ro, false, false, protocol.EPERM},
		{"zero empty", req(protocol.CmdWriteZeroes, 0, 0, 0), rw, false, false, protocol.EINVAL},
		{"block status", req(protocol.CmdBlockStatus, protocol.CmdFlagReqOne, 0, size), rw, true, true, ok},
		{"block status without context", req(protocol.CmdBlockStatus, 0, 0, 1), rw, true, false, protocol.EINVAL},
		{"block status past end", req(protocol.CmdBlockStatus, 0, size, 1), rw, true, true, protocol.EINVAL},
		{"block status empty", req(protocol.CmdBlockStatus, 0, 0, 0), rw, true, true, protocol.EINVAL},
		{"block status read-only", req(protocol.CmdBlockStatus, 0, 0, 1), ro, true, true, ok},
		{"resize", req(protocol.CmdResize, 0, 2*size, 0), rw, false, false, protocol.EINVAL},
		{"unknown", req(0xffff, 0, 0, 0), rw, false, false, protocol.EINVAL},
		{"unknown with payload length", req(99, 0, 0, 1<<31), rw, false, false, protocol.EINVAL},
		{"payload-len flag", req(protocol.CmdRead, protocol.CmdFlagPayloadLen, 0, 1), rw, false, false, protocol.EINVAL},
	}
	for _, tt := range tests {
		err := validate(tt.req, tt.exp, maxReq, tt.structured, tt.meta)
		var got protocol.Errno
		var re *requestError
		var pe *protocolError
		switch {
		case err == nil:
			got = ok
		case errors.As(err, &re):
			got = re.errno
		case errors.As(err, &pe):
			got = violation
		default:
			t.Errorf("%s: got error %T %v; want nil, *requestError or *protocolError", tt.name, err, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s: validate(%+v): got %v (%v); want %v", tt.name, tt.req, got, err, tt.want)
		}
	}
}

// TestReplyErrno: a backend's ENOTSUP and EOVERFLOW reach the client only
// where proto.md "Error values" allows them; elsewhere they are EINVAL.
func TestReplyErrno(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  protocol.Request
		in   protocol.Errno
		want protocol.Errno
	}{
		{"fast zero ENOTSUP", protocol.Request{Type: protocol.CmdWriteZeroes, Flags: protocol.CmdFlagFastZero}, protocol.ENOTSUP, protocol.ENOTSUP},
		{"zero ENOTSUP", protocol.Request{Type: protocol.CmdWriteZeroes}, protocol.ENOTSUP, protocol.EINVAL},
		{"trim ENOTSUP", protocol.Request{Type: protocol.CmdTrim}, protocol.ENOTSUP, protocol.EINVAL},
		{"DF read EOVERFLOW", protocol.Request{Type: protocol.CmdRead, Flags: protocol.CmdFlagDF}, protocol.EOVERFLOW, protocol.EOVERFLOW},
		{"read EOVERFLOW", protocol.Request{Type: protocol.CmdRead}, protocol.EOVERFLOW, protocol.EINVAL},
		{"write EOVERFLOW", protocol.Request{Type: protocol.CmdWrite}, protocol.EOVERFLOW, protocol.EINVAL},
		{"write EIO", protocol.Request{Type: protocol.CmdWrite}, protocol.EIO, protocol.EIO},
		{"flush ENOSPC", protocol.Request{Type: protocol.CmdFlush}, protocol.ENOSPC, protocol.ENOSPC},
	} {
		if got := replyErrno(tc.req, tc.in); got != tc.want {
			t.Errorf("%s: replyErrno(%v) = %v; want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

// TestClientMessage: error chunks keep the operation and the cause of a
// backend error but not the host path of the file behind the export.
func TestClientMessage(t *testing.T) {
	pathErr := &fs.PathError{Op: "pread", Path: "/var/lib/images/secret-vm.raw", Err: syscall.EIO}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"plain", errors.New("injected fault"), "injected fault"},
		{"path error", pathErr, "pread (export file): input/output error"},
		{"wrapped path error", fmt.Errorf("read at 4096: %w", pathErr), "read at 4096: pread (export file): input/output error"},
		{"request error", &requestError{errno: protocol.EIO, err: pathErr}, protocol.EIO.String() + ": pread (export file): input/output error"},
		{"path error in a path error", &fs.PathError{Op: "sync", Path: "/a/b", Err: &fs.PathError{Op: "open", Path: "/c/d", Err: syscall.ENOENT}},
			"sync (export file): open (export file): no such file or directory"},
		{"empty path", &fs.PathError{Op: "read", Err: syscall.EIO}, "read : input/output error"},
		{"short path", fmt.Errorf("read at 0: %w", &fs.PathError{Op: "pread", Path: "a", Err: syscall.EIO}), "read at 0: pread (export file): input/output error"},
	} {
		if got := clientMessage(tc.err); got != tc.want {
			t.Errorf("%s: clientMessage = %q; want %q", tc.name, got, tc.want)
		}
	}
}
