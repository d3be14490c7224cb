package nbdclient

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"github.com/nbdd/nbdd/protocol"
)

// Reply is one transmission reply, simple, structured or extended, as
// the client saw it.
type Reply struct {
	Cookie     uint64
	Errno      protocol.Errno
	Structured bool
	// Extended: the reply came as extended chunks, every one of which
	// carried Offset, the offset of the request answered.
	Extended bool
	Offset   uint64
	// Types are the chunk types of a structured reply, in order.
	Types []protocol.ReplyType
	// Data is a READ's data: a simple reply's, or the OFFSET_DATA and
	// OFFSET_HOLE chunks of a structured one placed at their offsets
	// (DataOff is the offset of Data[0]).
	Data    []byte
	DataOff uint64
	// Message and ErrOffset come from an error chunk.
	Message   string
	ErrOffset uint64
	// ContextID and Extents come from a BLOCK_STATUS chunk, ExtentsExt
	// from a BLOCK_STATUS_EXT one.
	ContextID  uint32
	Extents    []protocol.BlockDescriptor
	ExtentsExt []protocol.BlockDescriptorExt
}

// Send writes one request and its payload in one write. A READ sent
// under simple replies is remembered, so that ReadReply knows how much
// data its reply carries. Once extended headers are negotiated the
// request goes out in the extended form, a WRITE with
// NBD_CMD_FLAG_PAYLOAD_LEN.
func (c *Conn) Send(req protocol.Request, payload []byte) error {
	if c.Extended {
		x := req.Extended()
		if req.Type == protocol.CmdWrite {
			x.Flags |= protocol.CmdFlagPayloadLen
		}
		return c.SendExtended(x, payload)
	}
	var hdr [protocol.RequestSize]byte
	req.Put(&hdr)
	c.Expect(req)
	return c.send(hdr[:], req.Type, req.Cookie, payload)
}

// SendExtended writes req as it is, in the extended form, and its
// payload in one write: for requests a compact header cannot carry (64-bit
// lengths) and for tests of what the flags say.
func (c *Conn) SendExtended(req protocol.ExtendedRequest, payload []byte) error {
	var hdr [protocol.ExtendedRequestSize]byte
	req.Put(&hdr)
	return c.send(hdr[:], req.Type, req.Cookie, payload)
}

func (c *Conn) send(hdr []byte, typ protocol.Cmd, cookie uint64, payload []byte) error {
	bufs := net.Buffers{hdr}
	if len(payload) > 0 { // no empty write: net.Pipe would wait for a reader
		bufs = append(bufs, payload)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := bufs.WriteTo(c.rw); err != nil {
		return fmt.Errorf("send %v %d: %w", typ, cookie, err)
	}
	return nil
}

// Expect records req, which the caller wrote by other means (Write), so
// that ReadReply knows how much data its simple reply carries.
func (c *Conn) Expect(req protocol.Request) {
	if req.Type == protocol.CmdRead && !c.Structured {
		c.mu.Lock()
		c.reads[req.Cookie] = req.Length
		c.mu.Unlock()
	}
}

// Do sends one request and reads one reply, which must be the request's.
func (c *Conn) Do(req protocol.Request, payload []byte) (Reply, error) {
	if err := c.Send(req, payload); err != nil {
		return Reply{}, err
	}
	r, err := c.ReadReply()
	if err == nil && r.Cookie != req.Cookie {
		err = fmt.Errorf("%w: reply for cookie %d; want %d", ErrUnexpected, r.Cookie, req.Cookie)
	}
	return r, err
}

// ReadReply reads the next reply, whatever its cookie: a simple reply
// with the data of the READ it answers, or the chunks of a structured
// reply up to the one flagged DONE.
func (c *Conn) ReadReply() (Reply, error) {
	var magic [4]byte
	if _, err := io.ReadFull(c.r, magic[:]); err != nil {
		return Reply{}, fmt.Errorf("read reply: %w", err)
	}
	switch m := binary.BigEndian.Uint32(magic[:]); m {
	case protocol.SimpleReplyMagic:
		return c.readSimple(magic)
	case protocol.StructuredReplyMagic, protocol.ExtendedReplyMagic:
		return c.readStructured(magic)
	default:
		return Reply{}, fmt.Errorf("%w: reply magic %#x", protocol.ErrBadMagic, m)
	}
}

func (c *Conn) readSimple(magic [4]byte) (Reply, error) {
	var hdr [protocol.SimpleReplySize]byte
	copy(hdr[:], magic[:])
	if _, err := io.ReadFull(c.r, hdr[4:]); err != nil {
		return Reply{}, fmt.Errorf("read simple reply: %w", err)
	}
	sr, err := protocol.DecodeSimpleReply(&hdr)
	if err != nil {
		return Reply{}, err
	}
	r := Reply{Cookie: sr.Cookie, Errno: sr.Error}
	c.mu.Lock()
	n, isRead := c.reads[sr.Cookie]
	delete(c.reads, sr.Cookie)
	c.mu.Unlock()
	if isRead && sr.Error == protocol.EOK && c.DiscardData {
		if _, err := io.CopyN(io.Discard, c.r, int64(n)); err != nil {
			return r, fmt.Errorf("read %d bytes of READ %d: %w", n, sr.Cookie, err)
		}
	} else if isRead && sr.Error == protocol.EOK {
		r.Data = make([]byte, n)
		if _, err := io.ReadFull(c.r, r.Data); err != nil {
			return r, fmt.Errorf("read %d bytes of READ %d: %w", n, sr.Cookie, err)
		}
	}
	return r, nil
}

// readStructured reads the chunks of a reply whose first magic, already
// read, is magic: structured or extended. Every later chunk must have
// the same form and cookie, and an extended one the same offset.
func (c *Conn) readStructured(magic [4]byte) (Reply, error) {
	r := Reply{Structured: true, Extended: binary.BigEndian.Uint32(magic[:]) == protocol.ExtendedReplyMagic}
	for first := true; ; first = false {
		ch, err := c.readChunkHeader(r.Extended, first, magic)
		switch {
		case err != nil:
			return r, err
		case !first && ch.Cookie != r.Cookie:
			return r, fmt.Errorf("%w: chunk for cookie %d inside the reply to %d", ErrUnexpected, ch.Cookie, r.Cookie)
		case !first && ch.Offset != r.Offset:
			return r, fmt.Errorf("%w: chunk for offset %d inside the reply to a request at %d", ErrUnexpected, ch.Offset, r.Offset)
		case ch.Length > uint64(c.maxData()):
			return r, fmt.Errorf("%w: chunk of %d bytes", ErrUnexpected, ch.Length)
		}
		r.Cookie, r.Offset = ch.Cookie, ch.Offset
		if c.DiscardData && ch.Type == protocol.ReplyTypeOffsetData && ch.Length >= protocol.OffsetDataHeaderSize {
			r.Types = append(r.Types, ch.Type)
			if _, err := io.CopyN(io.Discard, c.r, int64(ch.Length)); err != nil {
				return r, fmt.Errorf("read %v payload: %w", ch.Type, err)
			}
		} else if err := c.readChunk(&r, ch); err != nil {
			return r, err
		}
		if ch.Flags&protocol.ReplyFlagDone != 0 {
			return r, nil
		}
	}
}

// readChunkHeader reads a chunk header of the form the reply's first
// chunk had; the first chunk's magic was read already. A structured
// header is returned widened, with offset 0.
func (c *Conn) readChunkHeader(extended, first bool, magic [4]byte) (protocol.ExtendedChunkHeader, error) {
	var b [protocol.ExtendedChunkHeaderSize]byte
	n := protocol.ChunkHeaderSize
	if extended {
		n = protocol.ExtendedChunkHeaderSize
	}
	hdr := b[:n]
	copy(hdr, magic[:])
	rest := hdr
	if first {
		rest = hdr[4:]
	}
	if _, err := io.ReadFull(c.r, rest); err != nil {
		return protocol.ExtendedChunkHeader{}, fmt.Errorf("read chunk header: %w", err)
	}
	if extended {
		return protocol.DecodeExtendedChunkHeader(&b)
	}
	ch, err := protocol.DecodeChunkHeader((*[protocol.ChunkHeaderSize]byte)(hdr))
	return protocol.ExtendedChunkHeader{Flags: ch.Flags, Type: ch.Type, Cookie: ch.Cookie, Length: uint64(ch.Length)}, err
}

// readChunk reads one chunk's payload into r.
func (c *Conn) readChunk(r *Reply, ch protocol.ExtendedChunkHeader) error {
	payload := make([]byte, ch.Length)
	if _, err := io.ReadFull(c.r, payload); err != nil {
		return fmt.Errorf("read %v payload: %w", ch.Type, err)
	}
	r.Types = append(r.Types, ch.Type)
	return r.addChunk(ch.Type, payload)
}

// addChunk adds one chunk's payload to r.
func (r *Reply) addChunk(typ protocol.ReplyType, p []byte) error {
	switch {
	case typ == protocol.ReplyTypeNone:
		if len(p) != 0 {
			return fmt.Errorf("%w: NONE chunk with %d bytes", ErrUnexpected, len(p))
		}
	case typ == protocol.ReplyTypeOffsetData:
		off, data, err := protocol.DecodeOffsetData(p)
		if err != nil {
			return err
		}
		r.place(off, data)
	case typ == protocol.ReplyTypeOffsetHole:
		h, err := protocol.DecodeOffsetHole(p)
		if err != nil {
			return err
		}
		r.place(h.Offset, make([]byte, h.Size))
	case typ == protocol.ReplyTypeBlockStatus:
		id, exts, err := protocol.DecodeBlockStatus(p)
		if err != nil {
			return err
		}
		r.ContextID, r.Extents = id, append(r.Extents, exts...)
	case typ == protocol.ReplyTypeBlockStatusExt:
		s, err := protocol.DecodeBlockStatusExt(p)
		if err != nil {
			return err
		}
		r.ContextID, r.ExtentsExt = s.ContextID, append(r.ExtentsExt, s.Descriptors...)
	case typ.IsError():
		e, err := protocol.DecodeErrorChunk(typ, p)
		if err != nil {
			return err
		}
		r.Errno, r.Message, r.ErrOffset = e.Errno, e.Message, e.Offset
	default:
		return fmt.Errorf("%w: chunk type %v", ErrUnexpected, typ)
	}
	return nil
}

// place puts a chunk's data at its offset within r.Data. Chunks of one
// READ may come in any order.
func (r *Reply) place(off uint64, b []byte) {
	if r.Data == nil {
		r.DataOff = off
	}
	if off < r.DataOff {
		grown := make([]byte, int(r.DataOff-off)+len(r.Data))
		copy(grown[r.DataOff-off:], r.Data)
		r.Data, r.DataOff = grown, off
	}
	end := int(off-r.DataOff) + len(b)
	if end > len(r.Data) {
		r.Data = append(r.Data, make([]byte, end-len(r.Data))...)
	}
	copy(r.Data[off-r.DataOff:], b)
}

// Disconnect sends NBD_CMD_DISC.
func (c *Conn) Disconnect() error {
	return c.Send(protocol.Request{Type: protocol.CmdDisc}, nil)
}
