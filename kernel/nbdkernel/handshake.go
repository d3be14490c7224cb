package nbdkernel

import (
	"errors"
	"fmt"
	"io"

	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
)

// maxReplyLen bounds the data of one option reply read during the
// handshake. Replies to NBD_OPT_GO are at most a few dozen bytes plus a
// string of protocol.MaxStringLen, so anything longer is a broken server.
const maxReplyLen = 64 << 10

// Errors of the handshake. Each is wrapped with the details.
var (
	// ErrRefused means the server answered NBD_OPT_GO (or closed the
	// connection after NBD_OPT_EXPORT_NAME) instead of entering
	// transmission: an unknown export, a policy refusal, a shutdown.
	ErrRefused = errors.New("nbd: server refused the export")
	// ErrUnsupportedServer means the server speaks a dialect the kernel
	// attach cannot use: oldstyle negotiation, or an unexpected reply.
	ErrUnsupportedServer = errors.New("nbd: unsupported server")
)

// Export is what the handshake learned about the selected export.
type Export struct {
	// Size is the export size in bytes.
	Size uint64
	// Flags are the transmission flags, passed to the kernel as they are.
	Flags protocol.TransmissionFlag
	// BlockSize holds the server's block size constraints (NBD_INFO_BLOCK_SIZE);
	// all zero when the server sent none.
	BlockSize protocol.BlockSize
}

// Handshake negotiates export name on rw and leaves rw at the start of the
// transmission phase, ready to be handed to the kernel.
//
// It speaks fixed newstyle (proto.md "Fixed newstyle negotiation") and
// selects the export with NBD_OPT_GO, asking for NBD_INFO_BLOCK_SIZE. It
// reads NBD_REP_INFO replies until NBD_REP_ACK and ignores information
// types it does not know, as the spec requires. Against a server that is not
// fixed newstyle, or that answers NBD_OPT_GO with NBD_REP_ERR_UNSUP, it
// falls back to NBD_OPT_EXPORT_NAME, as nbd-client does.
//
// Handshake reads rw without a buffer (nbdclient.Unbuffered), so it never
// consumes a byte past the handshake: the kernel takes over the same
// socket for transmission.
func Handshake(rw io.ReadWriter, name string) (Export, error) {
	if len(name) > protocol.MaxStringLen {
		return Export{}, fmt.Errorf("export name of %d bytes, at most %d", len(name), protocol.MaxStringLen)
	}
	c := nbdclient.Unbuffered(rw)
	c.MaxReplyData = maxReplyLen
	cf, err := c.Start()
	if err != nil {
		return Export{}, classify(name, err)
	}
	if cf&protocol.ClientFixedNewstyle != 0 {
		exp, err := c.Go(name, protocol.InfoBlockSize)
		var refused *nbdclient.RefusedError
		if !errors.As(err, &refused) || refused.Rep != protocol.RepErrUnsup {
			return Export{Size: exp.Size, Flags: exp.Flags, BlockSize: exp.BlockSize}, classify(name, err)
		}
	}
	exp, err := c.ExportName(name, cf&protocol.ClientNoZeroes != 0)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// NBD_OPT_EXPORT_NAME has no error reply: a refusal is a close.
		return Export{}, fmt.Errorf("%w %q: connection closed after NBD_OPT_EXPORT_NAME", ErrRefused, name)
	}
	return Export{Size: exp.Size, Flags: exp.Flags}, classify(name, err)
}

// classify wraps the client's errors in the handshake's own.
func classify(name string, err error) error {
	var refused *nbdclient.RefusedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &refused):
		if refused.Message != "" {
			return fmt.Errorf("%w %q: %v: %s", ErrRefused, name, refused.Rep, refused.Message)
		}
		return fmt.Errorf("%w %q: %v", ErrRefused, name, refused.Rep)
	case errors.Is(err, nbdclient.ErrOldstyle):
		return fmt.Errorf("%w: oldstyle negotiation", ErrUnsupportedServer)
	case errors.Is(err, nbdclient.ErrUnexpected), errors.Is(err, protocol.ErrMalformedReply):
		return fmt.Errorf("%w: %w", ErrUnsupportedServer, err)
	}
	return err
}
