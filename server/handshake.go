package server

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"

	"github.com/nbdd/nbdd/protocol"
)

// maxOptions bounds the options of one handshake, as nbdkit does, so a
// client cannot keep a connection in the handshake forever.
const maxOptions = 64

// maxDrainedOption is the largest oversized option whose data is skipped to
// answer NBD_REP_ERR_TOO_BIG; a longer one ends the connection.
const maxDrainedOption = 1 << 20

// handshake runs the fixed newstyle negotiation (proto.md "Newstyle
// negotiation") until the client selects an export, and sets c.exp.
func (c *conn) handshake() error {
	c.setDeadline(c.srv.handshakeTimeout())
	defer c.setDeadline(0)
	var greeting [protocol.HandshakeSize]byte
	protocol.PutHandshake(&greeting, protocol.FlagFixedNewstyle|protocol.FlagNoZeroes)
	if err := c.writeAll(greeting[:]); err != nil {
		return fmt.Errorf("write greeting: %w", err)
	}
	var cf [protocol.ClientFlagsSize]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	flags := protocol.ClientFlag(binary.BigEndian.Uint32(cf[:]))
	if flags&^protocol.KnownClientFlags != 0 {
		return violation("unknown client flags %v", flags)
	}
	noZeroes := flags&protocol.ClientNoZeroes != 0
	c.fixed = flags&protocol.ClientFixedNewstyle != 0
	if !c.fixed && c.srv.TLSMode == TLSRequire {
		// Such a client can only be served without TLS (proto.md "TLS
		// support"), which this server refuses to do.
		return violation("client did not set NBD_FLAG_C_FIXED_NEWSTYLE, so cannot start the TLS this server requires")
	}
	for range maxOptions {
		done, err := c.option(noZeroes)
		if err != nil || done {
			return err
		}
	}
	return violation("more than %d options", maxOptions)
}

// option reads and answers one option. It reports done when the client
// has entered the transmission phase.
func (c *conn) option(noZeroes bool) (done bool, err error) {
	var hdr [protocol.OptionHeaderSize]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		return false, fmt.Errorf("read option header: %w", err)
	}
	oh, err := protocol.DecodeOptionHeader(&hdr)
	if err != nil {
		return false, err
	}
	if oh.Length > protocol.MaxOptionLen {
		return c.refuseLongOption(oh)
	}
	c.optBuf = grow(c.optBuf, int(oh.Length))
	if _, err := io.ReadFull(c.br, c.optBuf); err != nil {
		return false, fmt.Errorf("read %v data: %w", oh.Opt, err)
	}
	c.log.Debug("option", "opt", oh.Opt, "len", oh.Length)
	if refused, err := c.refuseByPolicy(oh.Opt); refused || err != nil {
		return false, err
	}
	return c.dispatchOption(oh.Opt, c.optBuf, noZeroes)
}

// refuseLongOption answers an option longer than MaxOptionLen without
// reading it into memory: its data is skipped, then it is answered as any
// other option would be by ABORT (ACK, whatever the data: proto.md
// "NBD_OPT_ABORT") or by the TLS and shutdown policies, and otherwise
// with NBD_REP_ERR_TOO_BIG. Past maxDrainedOption, or for
// NBD_OPT_EXPORT_NAME (which has no error reply), the connection is
// closed.
func (c *conn) refuseLongOption(oh protocol.OptionHeader) (done bool, err error) {
	if oh.Opt == protocol.OptExportName || oh.Length > maxDrainedOption {
		return false, violation("%v of %d bytes", oh.Opt, oh.Length)
	}
	if _, err := io.CopyN(io.Discard, c.br, int64(oh.Length)); err != nil {
		return false, fmt.Errorf("skip %v data: %w", oh.Opt, err)
	}
	if oh.Opt == protocol.OptAbort {
		return c.dispatchOption(oh.Opt, nil, false)
	}
	if refused, err := c.refuseByPolicy(oh.Opt); refused || err != nil {
		return false, err
	}
	return false, c.optReply(oh.Opt, protocol.RepErrTooBig, fmt.Sprintf("option data longer than %d bytes", protocol.MaxOptionLen))
}

// refuseByPolicy answers options refused because of shutdown or a TLS
// requirement (proto.md "TLS support": FORCEDTLS).
func (c *conn) refuseByPolicy(opt protocol.Opt) (bool, error) {
	if opt == protocol.OptAbort {
		return false, nil
	}
	if c.srv.inShutdown.Load() {
		if opt == protocol.OptExportName {
			return true, ErrServerClosed
		}
		return true, c.optReply(opt, protocol.RepErrShutdown, "server is shutting down")
	}
	if c.tlsMode() == TLSRequire && !c.tls && opt != protocol.OptStartTLS {
		if opt == protocol.OptExportName {
			return true, violation("NBD_OPT_EXPORT_NAME before TLS")
		}
		return true, c.optReply(opt, protocol.RepErrTLSReqd, "TLS is required")
	}
	return false, nil
}

func (c *conn) dispatchOption(opt protocol.Opt, data []byte, noZeroes bool) (bool, error) {
	switch opt {
	case protocol.OptExportName:
		return c.optExportName(data, noZeroes)
	case protocol.OptGo, protocol.OptInfo:
		return c.optInfo(opt, data)
	case protocol.OptList:
		return false, c.optList(data)
	case protocol.OptAbort:
		c.optReply(opt, protocol.RepAck, "") // the client may already be gone
		return false, errAbort
	case protocol.OptStructuredReply, protocol.OptExtendedHeaders:
		return false, c.optHeaders(opt, data)
	case protocol.OptListMetaContext, protocol.OptSetMetaContext:
		return false, c.optMetaContext(opt, data)
	case protocol.OptStartTLS:
		return false, c.optStartTLS(data)
	default:
		// Unknown and experimental options (RESIZE's companions): the
		// data was read, so the stream stays in sync.
		return false, c.optReply(opt, protocol.RepErrUnsup, fmt.Sprintf("%v is not supported", opt))
	}
}

// optExportName selects an export the old way. It has no error reply, so
// an unknown name closes the connection (proto.md "NBD_OPT_EXPORT_NAME").
func (c *conn) optExportName(data []byte, noZeroes bool) (bool, error) {
	if !c.mode.Permits(protocol.OptExportName) {
		return false, violation("NBD_OPT_EXPORT_NAME after NBD_OPT_EXTENDED_HEADERS")
	}
	if len(data) > protocol.MaxStringLen {
		return false, violation("export name of %d bytes", len(data))
	}
	exp, err := c.openExport(string(data))
	if ae := (*accessError)(nil); errors.As(err, &ae) {
		c.log.Warn("client refused", "opt", protocol.OptExportName, "export", string(data), "reason", ae.reason)
		c.srv.connCounts.refusedExport.Add(1)
		return false, violation("NBD_OPT_EXPORT_NAME refused: %v", err) // it has no error reply
	}
	if err != nil && !errors.Is(err, errTLSRequired) {
		return false, err
	}
	if exp == nil {
		return false, violation("unknown export %q", data)
	}
	var b [protocol.ExportNameReplySize + protocol.ExportNamePadding]byte
	protocol.PutExportNameReply((*[protocol.ExportNameReplySize]byte)(b[:]), exp.size, exp.flags(c.mode))
	n := len(b)
	if noZeroes {
		n = protocol.ExportNameReplySize
	}
	if err := c.writeAll(b[:n]); err != nil {
		if exp.close != nil {
			exp.close() // the handshake failed, so nothing else will close it
		}
		return false, err
	}
	c.selectMetaFor(exp)
	c.exp = exp
	return true, nil
}

// optInfo answers NBD_OPT_INFO and NBD_OPT_GO (proto.md "NBD_OPT_INFO").
// The export is looked up afresh for every option, so INFO for one name
// never leaks into GO for another.
func (c *conn) optInfo(opt protocol.Opt, data []byte) (bool, error) {
	req, err := protocol.DecodeExportRequest(data)
	if err != nil {
		return false, c.optReply(opt, protocol.RepErrInvalid, err.Error())
	}
	exp, err := c.openExport(req.Name)
	if ae := (*accessError)(nil); errors.As(err, &ae) {
		c.log.Warn("client refused", "opt", opt, "export", req.Name, "reason", ae.reason)
		c.srv.connCounts.refusedExport.Add(1)
		c.replyBuf = append(c.replyBuf[:0], protocol.Message(ae.reason, protocol.MaxStringLen)...)
		return false, c.optReplyData(opt, protocol.RepErrPolicy, c.replyBuf) // logged above
	}
	if errors.Is(err, errTLSRequired) {
		if c.tlsMode() == TLSOff { // NOTLS: never NBD_REP_ERR_TLS_REQD
			return false, c.optReply(opt, protocol.RepErrPolicy, fmt.Sprintf("export %q requires TLS, which this connection cannot use", req.Name))
		}
		return false, c.optReply(opt, protocol.RepErrTLSReqd, fmt.Sprintf("export %q requires TLS", req.Name))
	}
	if err != nil {
		c.log.Warn("opening export", "export", req.Name, "err", err)
		return false, c.optReply(opt, protocol.RepErrPlatform, "export cannot be opened")
	}
	if exp == nil {
		return false, c.optReply(opt, protocol.RepErrUnknown, fmt.Sprintf("unknown export %q", req.Name))
	}
	if err := c.sendInfos(opt, exp, req); err != nil {
		if exp.close != nil {
			exp.close() // the client is gone: do not leak a directory export's file
		}
		return false, err
	}
	if opt == protocol.OptInfo {
		if exp.close != nil {
			exp.close()
		}
		return false, nil
	}
	c.selectMetaFor(exp)
	c.exp = exp
	return true, nil
}

// sendInfos sends NBD_INFO_EXPORT, the block size and whatever else was
// asked for, then the final ACK.
func (c *conn) sendInfos(opt protocol.Opt, exp *openExport, req protocol.ExportRequest) error {
	b := protocol.AppendInfoExport(c.replyBuf[:0], exp.size, exp.flags(c.mode))
	if err := c.optReplyData(opt, protocol.RepInfo, b); err != nil {
		return err
	}
	bs := protocol.BlockSize{Min: exp.minBlock, Preferred: min(exp.preferredBlock, exp.maxRequest(c.srv.maxRequestSize())), Max: exp.maxRequest(c.srv.maxRequestSize())}
	b = protocol.AppendInfoBlockSize(c.replyBuf[:0], bs)
	if err := c.optReplyData(opt, protocol.RepInfo, b); err != nil {
		return err
	}
	for i, info := range req.Infos {
		if slices.Contains(req.Infos[:i], info) {
			continue // "SHOULD only appear once": answered once
		}
		b = c.replyBuf[:0]
		switch {
		case info == protocol.InfoName:
			b = protocol.AppendInfoString(b, info, exp.Name)
		case info == protocol.InfoDescription && exp.Description != "":
			b = protocol.AppendInfoString(b, info, exp.Description)
		default:
			continue // unknown requests are ignored (proto.md "NBD_OPT_INFO")
		}
		if err := c.optReplyData(opt, protocol.RepInfo, b); err != nil {
			return err
		}
	}
	c.replyBuf = b
	return c.optReply(opt, protocol.RepAck, "")
}

// optList answers NBD_OPT_LIST with one NBD_REP_SERVER per export.
func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optReply(protocol.OptList, protocol.RepErrInvalid, "NBD_OPT_LIST takes no data")
	}
	exports, err := c.listExports()
	if err != nil {
		c.log.Warn("listing exports", "err", err)
		return c.optReply(protocol.OptList, protocol.RepErrPlatform, "exports cannot be listed")
	}
	for _, e := range exports {
		if e.TLSOnly && !c.tls {
			continue // SELECTIVETLS: hidden before TLS
		}
		if c.checkAccess(&e) != nil {
			continue // not for this client
		}
		c.replyBuf = protocol.AppendServer(c.replyBuf[:0], e.Name, e.Description)
		if err := c.optReplyData(protocol.OptList, protocol.RepServer, c.replyBuf); err != nil {
			return err
		}
	}
	return c.optReply(protocol.OptList, protocol.RepAck, "")
}

// optHeaders answers NBD_OPT_STRUCTURED_REPLY and
// NBD_OPT_EXTENDED_HEADERS, which choose the form of the transmission
// phase's messages: protocol.Mode.Negotiate has the rules for a client
// that asks for both, in either order, or for one twice. With
// Server.NoStructuredReplies both are refused as unsupported.
func (c *conn) optHeaders(opt protocol.Opt, data []byte) error {
	if c.srv.NoStructuredReplies {
		return c.optReply(opt, protocol.RepErrUnsup, "structured replies and extended headers are turned off")
	}
	mode, rep := c.mode.Negotiate(opt, uint32(len(data)))
	if rep != protocol.RepAck {
		return c.optReply(opt, rep, headersRefusal(c.mode, opt, len(data)))
	}
	c.mode = mode
	return c.optReply(opt, protocol.RepAck, "")
}

// headersRefusal is the message of optHeaders's refusal of opt, with
// dataLen bytes of data, in mode m.
func headersRefusal(m protocol.Mode, opt protocol.Opt, dataLen int) string {
	switch {
	case dataLen != 0:
		return fmt.Sprintf("%v takes no data", opt)
	case m == protocol.ModeExtended && opt == protocol.OptStructuredReply:
		return "extended headers are in force and cannot be downgraded to structured replies"
	}
	return fmt.Sprintf("%v was already negotiated", opt)
}

// optStartTLS upgrades the connection (proto.md "NBD_OPT_STARTTLS") and
// discards all state negotiated before it.
func (c *conn) optStartTLS(data []byte) error {
	switch {
	case c.tlsMode() == TLSOff || c.srv.TLSConfig == nil:
		return c.optReply(protocol.OptStartTLS, protocol.RepErrPolicy, "TLS is not available on this connection")
	case c.tls:
		return c.optReply(protocol.OptStartTLS, protocol.RepErrInvalid, "TLS is already active")
	case len(data) != 0:
		return c.optReply(protocol.OptStartTLS, protocol.RepErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case c.br.Buffered() != 0:
		return violation("data sent after NBD_OPT_STARTTLS before its reply")
	}
	if err := c.optReply(protocol.OptStartTLS, protocol.RepAck, ""); err != nil {
		return err
	}
	nc := c.nc
	if nc == nil {
		nc = rwcConn{c.rwc}
	}
	tc := tls.Server(nc, c.srv.tlsConfig())
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake (nbdd supports X.509 certificates only, not TLS-PSK): %w", err)
	}
	c.rwc, c.nc, c.tls = tc, tc, true
	c.src = &sockReader{conn: tc}
	c.br.Reset(c.src)
	c.mode, c.metaBase = protocol.ModeSimple, false
	c.log.Debug("TLS established", "version", tls.VersionName(tc.ConnectionState().Version))
	return nil
}

// optReply sends an option reply whose data is msg (a human-readable
// message for error replies; empty for ACK).
func (c *conn) optReply(opt protocol.Opt, typ protocol.Rep, msg string) error {
	if typ.IsError() {
		// A refused GO is a client that will not be served: worth a line
		// at the default level. Other refusals are part of negotiating.
		level := slog.LevelDebug
		if opt == protocol.OptGo {
			level = slog.LevelInfo
		}
		c.log.Log(context.Background(), level, "option refused", "opt", opt, "reply", typ, "reason", msg)
	}
	c.replyBuf = append(c.replyBuf[:0], protocol.Message(msg, protocol.MaxStringLen)...)
	return c.optReplyData(opt, typ, c.replyBuf)
}

func (c *conn) optReplyData(opt protocol.Opt, typ protocol.Rep, data []byte) error {
	var hdr [protocol.OptionReplyHeaderSize]byte
	protocol.OptionReplyHeader{Opt: opt, Type: typ, Length: uint32(len(data))}.Put(&hdr)
	bufs := net.Buffers{hdr[:]}
	if len(data) > 0 {
		// No empty Write: on a synchronous transport such as net.Pipe it
		// blocks until the client reads, which it never does for a reply
		// whose header says length 0.
		bufs = append(bufs, data)
	}
	if _, err := bufs.WriteTo(c.rwc); err != nil {
		return fmt.Errorf("write %v reply: %w", opt, err)
	}
	return nil
}

// openExport finds name among the static exports, then in the source.
// It returns nil for an unknown name.
func (c *conn) openExport(name string) (*openExport, error) {
	s := c.srv
	if name == "" {
		name = s.defaultExportName()
	}
	for i := range s.Exports {
		if e := &s.Exports[i]; e.Name == name {
			return c.withCaps(e, nil)
		}
	}
	if s.Source == nil {
		return nil, nil
	}
	e, closeFn, err := s.Source.Open(name)
	if err != nil || e == nil {
		return nil, err
	}
	return c.withCaps(e, closeFn)
}

func (c *conn) withCaps(e *Export, closeFn func() error) (*openExport, error) {
	if e.TLSOnly && !c.tls {
		if closeFn != nil {
			closeFn()
		}
		return nil, errTLSRequired // SELECTIVETLS
	}
	if err := c.checkAccess(e); err != nil {
		if closeFn != nil {
			closeFn()
		}
		return nil, err
	}
	cp, err := discoverCaps(e)
	if err != nil {
		if closeFn != nil {
			closeFn()
		}
		return nil, err
	}
	exp := &openExport{Export: e, caps: cp, close: closeFn}
	if e.SerialBackend {
		exp.serialize(c.srv.serialMutex(e))
	}
	return exp, nil
}

func (s *Server) defaultExportName() string {
	if s.DefaultExport != "" {
		return s.DefaultExport
	}
	if len(s.Exports) == 1 && s.Source == nil {
		return s.Exports[0].Name
	}
	return ""
}

func (c *conn) listExports() ([]Export, error) {
	exports := append([]Export(nil), c.srv.Exports...)
	if c.srv.Source == nil {
		return exports, nil
	}
	more, err := c.srv.Source.List()
	return append(exports, more...), err
}

// tlsMode is the TLS mode of this connection: the server's, unless the
// client did not set NBD_FLAG_C_FIXED_NEWSTYLE, which leaves it NOTLS
// (proto.md "Server-side requirements").
func (c *conn) tlsMode() TLSMode {
	if !c.fixed {
		return TLSOff
	}
	return c.srv.TLSMode
}

// grow returns b resized to n bytes, reusing its storage when it can.
func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]byte, n)
}

// errTLSRequired is returned when a TLS-only export is selected before
// TLS (proto.md "SELECTIVETLS": the server replies NBD_REP_ERR_TLS_REQD).
var errTLSRequired = errors.New("nbd: export requires TLS")
