package nbdkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/nbdd/nbdd/protocol"
)

// oldstyleMagic follows NBDMagic in an oldstyle greeting (proto.md
// "Oldstyle negotiation"), which nbdkernel does not speak.
const oldstyleMagic uint64 = 0x00420281861253

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
// Handshake reads rw without a buffer, so it never consumes a byte past the
// handshake: the kernel takes over the same socket for transmission.
func Handshake(rw io.ReadWriter, name string) (Export, error) {
	if len(name) > protocol.MaxStringLen {
		return Export{}, fmt.Errorf("export name of %d bytes, at most %d", len(name), protocol.MaxStringLen)
	}
	var greeting [protocol.HandshakeSize]byte
	if _, err := io.ReadFull(rw, greeting[:]); err != nil {
		return Export{}, fmt.Errorf("read greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(greeting[0:]); m != protocol.NBDMagic {
		return Export{}, fmt.Errorf("%w: greeting magic %#x", protocol.ErrBadMagic, m)
	}
	switch m := binary.BigEndian.Uint64(greeting[8:]); m {
	case protocol.IHaveOpt:
	case oldstyleMagic:
		return Export{}, fmt.Errorf("%w: oldstyle negotiation", ErrUnsupportedServer)
	default:
		return Export{}, fmt.Errorf("%w: newstyle magic %#x", protocol.ErrBadMagic, m)
	}
	hf := protocol.HandshakeFlag(binary.BigEndian.Uint16(greeting[16:]))
	var cf protocol.ClientFlag
	if hf&protocol.FlagFixedNewstyle != 0 {
		cf |= protocol.ClientFixedNewstyle
	}
	if hf&protocol.FlagNoZeroes != 0 {
		cf |= protocol.ClientNoZeroes
	}
	if err := writeFull(rw, binary.BigEndian.AppendUint32(nil, uint32(cf))); err != nil {
		return Export{}, fmt.Errorf("write client flags: %w", err)
	}
	if cf&protocol.ClientFixedNewstyle != 0 {
		exp, err := optGo(rw, name)
		if !errors.Is(err, errGoUnsupported) {
			return exp, err
		}
	}
	return optExportName(rw, name, cf&protocol.ClientNoZeroes != 0)
}

// errGoUnsupported makes Handshake fall back to NBD_OPT_EXPORT_NAME.
var errGoUnsupported = errors.New("NBD_OPT_GO unsupported")

// optGo sends NBD_OPT_GO and reads its replies (proto.md "NBD_OPT_GO").
func optGo(rw io.ReadWriter, name string) (Export, error) {
	data := protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: name, Infos: []protocol.Info{protocol.InfoBlockSize}})
	if err := sendOption(rw, protocol.OptGo, data); err != nil {
		return Export{}, err
	}
	var exp Export
	seenExport := false
	for {
		rh, data, err := readOptionReply(rw, protocol.OptGo)
		if err != nil {
			return Export{}, err
		}
		switch {
		case rh.Type == protocol.RepAck:
			if !seenExport {
				return Export{}, fmt.Errorf("%w: NBD_REP_ACK without NBD_INFO_EXPORT", ErrUnsupportedServer)
			}
			return exp, nil
		case rh.Type == protocol.RepInfo:
			if err := parseInfo(data, &exp, &seenExport); err != nil {
				return Export{}, err
			}
		case rh.Type == protocol.RepErrUnsup:
			return Export{}, errGoUnsupported
		case rh.Type.IsError():
			return Export{}, refusal(name, rh.Type, data)
		default:
			return Export{}, fmt.Errorf("%w: %v in reply to NBD_OPT_GO", ErrUnsupportedServer, rh.Type)
		}
	}
}

// parseInfo decodes one NBD_REP_INFO. Unknown information types are
// ignored (proto.md "NBD_REP_INFO": the client "MUST ignore" them).
func parseInfo(data []byte, exp *Export, seenExport *bool) error {
	if len(data) < 2 {
		return fmt.Errorf("%w: NBD_REP_INFO of %d bytes", ErrUnsupportedServer, len(data))
	}
	switch info := protocol.Info(binary.BigEndian.Uint16(data)); info {
	case protocol.InfoExport:
		if len(data) != 12 {
			return fmt.Errorf("%w: %v of %d bytes, want 12", ErrUnsupportedServer, info, len(data))
		}
		exp.Size = binary.BigEndian.Uint64(data[2:])
		exp.Flags = protocol.TransmissionFlag(binary.BigEndian.Uint16(data[10:]))
		*seenExport = true
	case protocol.InfoBlockSize:
		if len(data) != 14 {
			return fmt.Errorf("%w: %v of %d bytes, want 14", ErrUnsupportedServer, info, len(data))
		}
		exp.BlockSize = protocol.BlockSize{
			Min:       binary.BigEndian.Uint32(data[2:]),
			Preferred: binary.BigEndian.Uint32(data[6:]),
			Max:       binary.BigEndian.Uint32(data[10:]),
		}
	}
	return nil
}

// refusal turns an error reply into ErrRefused with the server's message,
// which proto.md makes a UTF-8 string for humans.
func refusal(name string, rep protocol.Rep, msg []byte) error {
	if len(msg) > 0 {
		return fmt.Errorf("%w %q: %v: %s", ErrRefused, name, rep, msg)
	}
	return fmt.Errorf("%w %q: %v", ErrRefused, name, rep)
}

// optExportName selects the export the old way (proto.md
// "NBD_OPT_EXPORT_NAME"). The server has no error reply for it: it closes
// the connection on an unknown name.
func optExportName(rw io.ReadWriter, name string, noZeroes bool) (Export, error) {
	if err := sendOption(rw, protocol.OptExportName, []byte(name)); err != nil {
		return Export{}, err
	}
	n := protocol.ExportNameReplySize
	if !noZeroes {
		n += protocol.ExportNamePadding
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rw, b); err != nil {
		if errors.Is(err, io.EOF) {
			return Export{}, fmt.Errorf("%w %q: connection closed after NBD_OPT_EXPORT_NAME", ErrRefused, name)
		}
		return Export{}, fmt.Errorf("read NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	return Export{
		Size:  binary.BigEndian.Uint64(b[0:]),
		Flags: protocol.TransmissionFlag(binary.BigEndian.Uint16(b[8:])),
	}, nil
}

// sendOption writes an option header and its data in one Write.
func sendOption(w io.Writer, opt protocol.Opt, data []byte) error {
	var hdr [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: opt, Length: uint32(len(data))}.Put(&hdr)
	if err := writeFull(w, append(hdr[:], data...)); err != nil {
		return fmt.Errorf("write %v: %w", opt, err)
	}
	return nil
}

// readOptionReply reads one option reply for opt, with its data bounded by
// maxReplyLen.
func readOptionReply(r io.Reader, opt protocol.Opt) (protocol.OptionReplyHeader, []byte, error) {
	var hdr [protocol.OptionReplyHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return protocol.OptionReplyHeader{}, nil, fmt.Errorf("read %v reply: %w", opt, err)
	}
	rh, err := protocol.DecodeOptionReplyHeader(&hdr)
	if err != nil {
		return rh, nil, err
	}
	if rh.Opt != opt {
		return rh, nil, fmt.Errorf("%w: reply to %v while waiting for %v", ErrUnsupportedServer, rh.Opt, opt)
	}
	if rh.Length > maxReplyLen {
		return rh, nil, fmt.Errorf("%w: %v reply of %d bytes", ErrUnsupportedServer, rh.Type, rh.Length)
	}
	data := make([]byte, rh.Length)
	if _, err := io.ReadFull(r, data); err != nil {
		return rh, nil, fmt.Errorf("read %v %v data: %w", opt, rh.Type, err)
	}
	return rh, data, nil
}

func writeFull(w io.Writer, b []byte) error {
	_, err := w.Write(b) // io.Writer: n < len(b) implies err != nil
	return err
}
