package nbdclient

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/nbdd/nbdd/protocol"
)

// OptionReply is one option reply.
type OptionReply struct {
	Opt  protocol.Opt
	Type protocol.Rep
	Data []byte
}

// RefusedError is an option the server answered with an error reply
// (proto.md "Option reply types"): its message is for humans.
type RefusedError struct {
	Opt     protocol.Opt
	Rep     protocol.Rep
	Message string
}

func (e *RefusedError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%v refused: %v", e.Opt, e.Rep)
	}
	return fmt.Sprintf("%v refused: %v: %s", e.Opt, e.Rep, e.Message)
}

// ErrUnexpected is returned for a reply the client did not ask for, or
// that breaks the protocol.
var ErrUnexpected = errors.New("nbd: unexpected reply")

// Export is what NBD_OPT_GO, NBD_OPT_INFO or NBD_OPT_EXPORT_NAME told of
// an export.
type Export struct {
	Size  uint64
	Flags protocol.TransmissionFlag
	// BlockSize is zero unless the server sent NBD_INFO_BLOCK_SIZE.
	BlockSize protocol.BlockSize
	// Infos are the NBD_REP_INFO replies, in the order received.
	Infos []protocol.InfoReply
}

// Info returns the reply of type typ, and whether there was one.
func (e Export) Info(typ protocol.Info) (protocol.InfoReply, bool) {
	i := slices.IndexFunc(e.Infos, func(r protocol.InfoReply) bool { return r.Type == typ })
	if i < 0 {
		return protocol.InfoReply{}, false
	}
	return e.Infos[i], true
}

// SendOption sends an option and its data in one write.
func (c *Conn) SendOption(opt protocol.Opt, data []byte) error {
	var hdr [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: opt, Length: uint32(len(data))}.Put(&hdr)
	if _, err := c.Write(append(hdr[:], data...)); err != nil {
		return fmt.Errorf("write %v: %w", opt, err)
	}
	return nil
}

// ReadOptionReply reads one option reply, its data bounded by
// MaxReplyData.
func (c *Conn) ReadOptionReply() (OptionReply, error) {
	var hdr [protocol.OptionReplyHeaderSize]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		return OptionReply{}, fmt.Errorf("read option reply: %w", err)
	}
	h, err := protocol.DecodeOptionReplyHeader(&hdr)
	if err != nil {
		return OptionReply{}, err
	}
	if h.Length > c.maxData() {
		return OptionReply{}, fmt.Errorf("%w: %v %v reply of %d bytes", ErrUnexpected, h.Opt, h.Type, h.Length)
	}
	data := make([]byte, h.Length)
	if _, err := io.ReadFull(c.r, data); err != nil {
		return OptionReply{}, fmt.Errorf("read %v %v data: %w", h.Opt, h.Type, err)
	}
	return OptionReply{Opt: h.Opt, Type: h.Type, Data: data}, nil
}

// readReplies reads the replies to opt up to its ACK, handing each reply
// of type typ to fn. An error reply is a *RefusedError.
func (c *Conn) readReplies(opt protocol.Opt, typ protocol.Rep, fn func([]byte) error) error {
	for {
		r, err := c.ReadOptionReply()
		switch {
		case err != nil:
			return err
		case r.Opt != opt:
			return fmt.Errorf("%w: reply to %v while waiting for %v", ErrUnexpected, r.Opt, opt)
		case r.Type == protocol.RepAck:
			return nil
		case r.Type.IsError():
			return &RefusedError{Opt: opt, Rep: r.Type, Message: string(r.Data)}
		case r.Type != typ:
			return fmt.Errorf("%w: %v in reply to %v", ErrUnexpected, r.Type, opt)
		}
		if err := fn(r.Data); err != nil {
			return err
		}
	}
}

// Go selects export name with NBD_OPT_GO, asking for infos besides
// NBD_INFO_EXPORT; the connection is then in the transmission phase.
func (c *Conn) Go(name string, infos ...protocol.Info) (Export, error) {
	return c.infoOrGo(protocol.OptGo, name, infos)
}

// Info asks about export name with NBD_OPT_INFO.
func (c *Conn) Info(name string, infos ...protocol.Info) (Export, error) {
	return c.infoOrGo(protocol.OptInfo, name, infos)
}

func (c *Conn) infoOrGo(opt protocol.Opt, name string, infos []protocol.Info) (Export, error) {
	data := protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: name, Infos: infos})
	if err := c.SendOption(opt, data); err != nil {
		return Export{}, err
	}
	var exp Export
	seen := false
	err := c.readReplies(opt, protocol.RepInfo, func(data []byte) error {
		r, err := protocol.DecodeInfoReply(data)
		if err != nil {
			return err
		}
		exp.Infos = append(exp.Infos, r)
		switch r.Type {
		case protocol.InfoExport:
			exp.Size, exp.Flags, seen = r.Size, r.Flags, true
		case protocol.InfoBlockSize:
			exp.BlockSize = r.BlockSize
		}
		return nil
	})
	if err == nil && !seen {
		err = fmt.Errorf("%w: %v %q acknowledged without NBD_INFO_EXPORT", ErrUnexpected, opt, name)
	}
	return exp, err
}

// ExportName selects export name with NBD_OPT_EXPORT_NAME, which has no
// error reply: a server that refuses closes the connection. Unless
// noZeroes was negotiated, the reply's 124 bytes of padding are read and
// must be zero.
func (c *Conn) ExportName(name string, noZeroes bool) (Export, error) {
	if err := c.SendOption(protocol.OptExportName, []byte(name)); err != nil {
		return Export{}, err
	}
	var b [protocol.ExportNameReplySize + protocol.ExportNamePadding]byte
	n := len(b)
	if noZeroes {
		n = protocol.ExportNameReplySize
	}
	if _, err := io.ReadFull(c.r, b[:n]); err != nil {
		return Export{}, fmt.Errorf("read %v reply: %w", protocol.OptExportName, err)
	}
	if slices.ContainsFunc(b[protocol.ExportNameReplySize:n], func(x byte) bool { return x != 0 }) {
		return Export{}, fmt.Errorf("%w: %v padding is not zero", ErrUnexpected, protocol.OptExportName)
	}
	size, flags := protocol.DecodeExportNameReply((*[protocol.ExportNameReplySize]byte)(b[:]))
	return Export{Size: size, Flags: flags}, nil
}

// List asks for the exports with NBD_OPT_LIST.
func (c *Conn) List() ([]protocol.ServerReply, error) {
	return collect(c, protocol.OptList, nil, protocol.RepServer, protocol.DecodeServerReply)
}

// collect sends opt with data and decodes each reply of type typ up to
// the ACK.
func collect[T any](c *Conn, opt protocol.Opt, data []byte, typ protocol.Rep, decode func([]byte) (T, error)) ([]T, error) {
	if err := c.SendOption(opt, data); err != nil {
		return nil, err
	}
	var out []T
	err := c.readReplies(opt, typ, func(data []byte) error {
		r, err := decode(data)
		out = append(out, r)
		return err
	})
	return out, err
}

// StructuredReply negotiates structured replies.
func (c *Conn) StructuredReply() error {
	if err := c.SendOption(protocol.OptStructuredReply, nil); err != nil {
		return err
	}
	if err := c.readReplies(protocol.OptStructuredReply, protocol.RepAck, nil); err != nil {
		return err
	}
	c.Structured = true
	return nil
}

// ExtendedHeaders negotiates extended headers (proto.md
// "NBD_OPT_EXTENDED_HEADERS"): from then on requests go out in the
// 32-byte form and every reply comes as extended chunks.
func (c *Conn) ExtendedHeaders() error {
	if err := c.SendOption(protocol.OptExtendedHeaders, nil); err != nil {
		return err
	}
	if err := c.readReplies(protocol.OptExtendedHeaders, protocol.RepAck, nil); err != nil {
		return err
	}
	c.Structured, c.Extended = true, true
	return nil
}

// MetaContext sends NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT
// and returns the contexts the server replied with.
func (c *Conn) MetaContext(opt protocol.Opt, name string, queries ...string) ([]protocol.MetaContextReply, error) {
	data := protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: name, Queries: queries})
	return collect(c, opt, data, protocol.RepMetaContext, protocol.DecodeMetaContextReply)
}

// Abort sends NBD_OPT_ABORT and reads its ACK, if the server sends one
// before it closes the connection: either is a clean end.
func (c *Conn) Abort() error {
	if err := c.SendOption(protocol.OptAbort, nil); err != nil {
		return err
	}
	err := c.readReplies(protocol.OptAbort, protocol.RepAck, nil)
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
