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
	req := func(typ protocol.Cmd, flags protocol.CmdFlag, off, n uint64) protocol.ExtendedRequest {
		return protocol.ExtendedRequest{Type: typ, Flags: flags, Offset: off, Length: n}
	}
	const (
		ok        = protocol.EOK
		violation = protocol.Errno(1 << 31) // a connection-fatal protocolError

		simple     = protocol.ModeSimple
		structured = protocol.ModeStructured
		extended   = protocol.ModeExtended
		payloadLen = protocol.CmdFlagPayloadLen
	)
	huge := &openExport{Export: &Export{Name: "huge"}, caps: caps{size: 1 << 50, trimmer: backend.NewMemory(1 << 50)}}
	tests := []struct {
		name string
		req  protocol.ExtendedRequest
		exp  *openExport
		mode protocol.Mode
		meta bool
		want protocol.Errno
	}{
		{"read", req(protocol.CmdRead, 0, 0, 4096), rw, simple, false, ok},
		{"read to the end", req(protocol.CmdRead, 0, size-1, 1), rw, simple, false, ok},
		{"read max", req(protocol.CmdRead, 0, 0, maxReq), rw, simple, false, ok},
		{"read FUA", req(protocol.CmdRead, protocol.CmdFlagFUA, 0, 1), rw, simple, false, ok},
		{"read over max", req(protocol.CmdRead, 0, 0, maxReq+1), rw, simple, false, protocol.EINVAL},
		{"read empty", req(protocol.CmdRead, 0, 0, 0), rw, simple, false, protocol.EINVAL},
		{"read past end", req(protocol.CmdRead, 0, size, 1), rw, simple, false, protocol.EINVAL},
		{"read straddling", req(protocol.CmdRead, 0, size-1, 2), rw, simple, false, protocol.EINVAL},
		{"read offset wraps", req(protocol.CmdRead, 0, 1<<64-1, 2), rw, simple, false, protocol.EINVAL},
		{"read DF simple", req(protocol.CmdRead, protocol.CmdFlagDF, 0, 1), rw, simple, false, protocol.EINVAL},
		{"read DF structured", req(protocol.CmdRead, protocol.CmdFlagDF, 0, 1), rw, structured, false, ok},
		{"read NO_HOLE", req(protocol.CmdRead, protocol.CmdFlagNoHole, 0, 1), rw, simple, false, protocol.EINVAL},
		// A minimum block size binds READ and WRITE even for a client that
		// never asked for it: an error reply, not a failure half way.
		{"read aligned", req(protocol.CmdRead, 0, 512, 4096), direct, simple, false, ok},
		{"read unaligned length", req(protocol.CmdRead, 0, 0, 4096+100), direct, simple, false, protocol.EINVAL},
		{"read unaligned offset", req(protocol.CmdRead, 0, 100, 512), direct, simple, false, protocol.EINVAL},
		{"write unaligned", req(protocol.CmdWrite, 0, 0, 4096+100), direct, simple, false, protocol.EINVAL},
		{"write aligned", req(protocol.CmdWrite, 0, 4096, 1024), direct, simple, false, ok},
		{"trim unaligned", req(protocol.CmdTrim, 0, 100, 100), &openExport{Export: &Export{}, caps: caps{size: size, minBlock: 512, trimmer: backend.NewMemory(size)}}, simple, false, ok},
		{"read read-only", req(protocol.CmdRead, 0, 0, 1), ro, simple, false, ok},
		{"write", req(protocol.CmdWrite, protocol.CmdFlagFUA, 0, 1), rw, simple, false, ok},
		// Over the maximum but within 32 MiB: an error reply, the payload
		// drained; beyond both, a framing violation.
		{"write over max", req(protocol.CmdWrite, 0, 0, maxReq+1), rw, simple, false, protocol.EINVAL},
		{"write over max read-only", req(protocol.CmdWrite, 0, 0, maxReq+1), ro, simple, false, protocol.EPERM},
		{"write over 32 MiB", req(protocol.CmdWrite, 0, 0, protocol.DefaultMaxPayload+1), rw, simple, false, violation},
		{"write over 32 MiB past end", req(protocol.CmdWrite, 0, size, protocol.DefaultMaxPayload+1), rw, simple, false, violation},
		{"write over 32 MiB read-only", req(protocol.CmdWrite, 0, 0, protocol.DefaultMaxPayload+1), ro, simple, false, violation},
		{"write past end", req(protocol.CmdWrite, 0, size, 1), rw, simple, false, protocol.ENOSPC},
		{"write straddling", req(protocol.CmdWrite, 0, size-1, 2), rw, simple, false, protocol.ENOSPC},
		{"write empty", req(protocol.CmdWrite, 0, 0, 0), rw, simple, false, protocol.EINVAL},
		{"write read-only", req(protocol.CmdWrite, 0, 0, 1), ro, simple, false, protocol.EPERM},
		{"write DF", req(protocol.CmdWrite, protocol.CmdFlagDF, 0, 1), rw, structured, false, protocol.EINVAL},
		{"flush", req(protocol.CmdFlush, 0, 0, 0), rw, simple, false, ok},
		{"flush read-only", req(protocol.CmdFlush, 0, 0, 0), ro, simple, false, ok},
		{"flush NO_HOLE", req(protocol.CmdFlush, protocol.CmdFlagNoHole, 0, 0), rw, simple, false, protocol.EINVAL},
		{"trim", req(protocol.CmdTrim, 0, 0, size), rw, simple, false, ok},
		{"trim longer than max", req(protocol.CmdTrim, 0, 0, maxReq+1), rw, simple, false, ok},
		{"trim unsupported", req(protocol.CmdTrim, 0, 0, 1), noTrim, simple, false, protocol.EINVAL},
		{"trim read-only", req(protocol.CmdTrim, 0, 0, 1), ro, simple, false, protocol.EPERM},
		{"trim past end", req(protocol.CmdTrim, 0, size, 1), rw, simple, false, protocol.EINVAL},
		{"trim empty", req(protocol.CmdTrim, 0, 0, 0), rw, simple, false, protocol.EINVAL},
		{"cache", req(protocol.CmdCache, 0, 0, size), rw, simple, false, ok},
		{"cache empty", req(protocol.CmdCache, 0, size, 0), rw, simple, false, ok},
		{"cache past end", req(protocol.CmdCache, 0, size, 1), rw, simple, false, protocol.EINVAL},
		{"zero", req(protocol.CmdWriteZeroes, protocol.CmdFlagNoHole, 0, size), rw, simple, false, ok},
		{"zero fast", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero, 0, size), fast, simple, false, ok},
		{"zero fast no-hole", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero|protocol.CmdFlagNoHole, 0, 1), fast, simple, false, protocol.ENOTSUP},
		// Not advertised: EINVAL, not ENOTSUP (proto.md "NBD_CMD_WRITE_ZEROES").
		{"zero fast not advertised", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero, 0, size), rw, simple, false, protocol.EINVAL},
		{"zero fast read-only", req(protocol.CmdWriteZeroes, protocol.CmdFlagFastZero|protocol.CmdFlagNoHole, 0, 1), ro, simple, false, protocol.EPERM},
		{"zero past end", req(protocol.CmdWriteZeroes, 0, size, 1), rw, simple, false, protocol.ENOSPC},
		{"zero read-only", req(protocol.CmdWriteZeroes, 0, 0, 1), ro, simple, false, protocol.EPERM},
		{"zero empty", req(protocol.CmdWriteZeroes, 0, 0, 0), rw, simple, false, protocol.EINVAL},
		{"block status", req(protocol.CmdBlockStatus, protocol.CmdFlagReqOne, 0, size), rw, structured, true, ok},
		{"block status without context", req(protocol.CmdBlockStatus, 0, 0, 1), rw, structured, false, protocol.EINVAL},
		{"block status past end", req(protocol.CmdBlockStatus, 0, size, 1), rw, structured, true, protocol.EINVAL},
		{"block status empty", req(protocol.CmdBlockStatus, 0, 0, 0), rw, structured, true, protocol.EINVAL},
		{"block status read-only", req(protocol.CmdBlockStatus, 0, 0, 1), ro, structured, true, ok},
		{"resize", req(protocol.CmdResize, 0, 2*size, 0), rw, simple, false, protocol.EINVAL},
		{"unknown", req(0xffff, 0, 0, 0), rw, simple, false, protocol.EINVAL},
		{"unknown with payload length", req(99, 0, 0, 1<<31), rw, simple, false, protocol.EINVAL},
		{"payload-len flag", req(protocol.CmdRead, protocol.CmdFlagPayloadLen, 0, 1), rw, simple, false, protocol.EINVAL},
		{"payload-len write compact", req(protocol.CmdWrite, payloadLen, 0, 1), rw, structured, false, protocol.EINVAL},
		// Extended headers: a WRITE may carry PAYLOAD_LEN, nothing else may;
		// effect lengths are 64-bit, bounded by the export's end alone,
		// except a READ's; a payload beyond 32 MiB is a violation
		// whatever the command.
		{"ext write", req(protocol.CmdWrite, payloadLen|protocol.CmdFlagFUA, 0, 4096), rw, extended, false, ok},
		{"ext write without payload-len, as qemu 10 sends it", req(protocol.CmdWrite, 0, 0, 4096), rw, extended, false, ok},
		{"ext write over max", req(protocol.CmdWrite, payloadLen, 0, maxReq+1), rw, extended, false, protocol.EINVAL},
		{"ext write over 32 MiB", req(protocol.CmdWrite, payloadLen, 0, protocol.DefaultMaxPayload+1), rw, extended, false, violation},
		{"ext write past end", req(protocol.CmdWrite, payloadLen, size, 1), rw, extended, false, protocol.ENOSPC},
		{"ext flush with payload", req(protocol.CmdFlush, payloadLen, 0, 16), rw, extended, false, protocol.EINVAL},
		{"ext read with payload", req(protocol.CmdRead, payloadLen, 0, 16), rw, extended, false, protocol.EINVAL},
		{"ext block status payload", req(protocol.CmdBlockStatus, payloadLen, 0, 12), rw, extended, true, protocol.EINVAL},
		{"ext unknown with payload", req(99, payloadLen, 0, 16), rw, extended, false, protocol.EINVAL},
		{"ext unknown with 4 GiB payload", req(99, payloadLen, 0, 1<<32), rw, extended, false, violation},
		{"ext flush with 2^64-1 payload", req(protocol.CmdFlush, payloadLen, 0, 1<<64-1), rw, extended, false, violation},
		{"ext read", req(protocol.CmdRead, 0, 0, maxReq), rw, extended, false, ok},
		{"ext read 4 GiB", req(protocol.CmdRead, 0, 0, 1<<32), huge, extended, false, protocol.EINVAL},
		{"ext read DF", req(protocol.CmdRead, protocol.CmdFlagDF, 0, 1), rw, extended, false, ok},
		{"ext trim 1 PiB", req(protocol.CmdTrim, 0, 0, 1<<50), huge, extended, false, ok},
		{"ext trim past end", req(protocol.CmdTrim, 0, 1, 1<<50), huge, extended, false, protocol.EINVAL},
		{"ext trim length wraps", req(protocol.CmdTrim, 0, 1<<49, 1<<64-1), huge, extended, false, protocol.EINVAL},
		{"ext zero 5 GiB", req(protocol.CmdWriteZeroes, 0, 0, 5<<30), huge, extended, false, ok},
		{"ext zero past end", req(protocol.CmdWriteZeroes, 0, 0, 1<<50+1), huge, extended, false, protocol.ENOSPC},
		{"ext cache 5 GiB", req(protocol.CmdCache, 0, 0, 5<<30), huge, extended, false, ok},
		{"ext block status 1 PiB", req(protocol.CmdBlockStatus, 0, 0, 1<<50), huge, extended, true, ok},
		{"ext block status empty", req(protocol.CmdBlockStatus, 0, 0, 0), huge, extended, true, protocol.EINVAL},
	}
	for _, tt := range tests {
		err := validate(tt.req, tt.exp, maxReq, tt.mode, tt.meta)
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
		req  protocol.ExtendedRequest
		in   protocol.Errno
		want protocol.Errno
	}{
		{"fast zero ENOTSUP", protocol.ExtendedRequest{Type: protocol.CmdWriteZeroes, Flags: protocol.CmdFlagFastZero}, protocol.ENOTSUP, protocol.ENOTSUP},
		{"zero ENOTSUP", protocol.ExtendedRequest{Type: protocol.CmdWriteZeroes}, protocol.ENOTSUP, protocol.EINVAL},
		{"trim ENOTSUP", protocol.ExtendedRequest{Type: protocol.CmdTrim}, protocol.ENOTSUP, protocol.EINVAL},
		{"DF read EOVERFLOW", protocol.ExtendedRequest{Type: protocol.CmdRead, Flags: protocol.CmdFlagDF}, protocol.EOVERFLOW, protocol.EOVERFLOW},
		{"read EOVERFLOW", protocol.ExtendedRequest{Type: protocol.CmdRead}, protocol.EOVERFLOW, protocol.EINVAL},
		{"write EOVERFLOW", protocol.ExtendedRequest{Type: protocol.CmdWrite}, protocol.EOVERFLOW, protocol.EINVAL},
		{"write EIO", protocol.ExtendedRequest{Type: protocol.CmdWrite}, protocol.EIO, protocol.EIO},
		{"flush ENOSPC", protocol.ExtendedRequest{Type: protocol.CmdFlush}, protocol.ENOSPC, protocol.ENOSPC},
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
