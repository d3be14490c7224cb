package logdisk

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// The layout of an image under its prefix P (docs/s3.md "Layout"):
//
//	P/meta               image parameters (JSON), created put-if-absent
//	P/log/<seq>          log objects, 16 hex digits: segments, claims, closes
//	P/ckpt/<seq>         map checkpoint covering every log object <= seq
//	P/snap/<name>        a sealed snapshot: the checkpoint it pins (JSON)
//	P/clones/<id>        a clone of one of P's snapshots (JSON), by clone ID
//	P/snaprm/<name>      a deletion of snapshot name in progress
//	P/probe/put-if-absent  the put-if-absent probe's object (Probe); older
//	                     versions left P/probe/<random>, deleted after use
//
// Every object is written with put-if-absent and never changed; only the
// writer's garbage collection and the removal of images, snapshots and
// clones delete objects.
const (
	metaKey    = "meta"
	logDir     = "log/"
	ckptDir    = "ckpt/"
	snapDir    = "snap/"
	clonesDir  = "clones/"
	snapRmDir  = "snaprm/"
	probeDir   = "probe/"
	probeKey   = probeDir + "put-if-absent"
	seqDigits  = 16
	formatName = "nbdd-logdisk"
	formatV1   = 1
)

// crcTable is CRC-32C (Castagnoli), computed in hardware on amd64 and arm64.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, crcTable) }

// errCorrupt marks objects or journal records that fail to decode.
var errCorrupt = errors.New("logdisk: corrupt")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, args...))
}

// seqKey names the object of sequence number seq under dir.
func seqKey(prefix, dir string, seq uint64) string {
	return fmt.Sprintf("%s%s%0*x", prefix, dir, seqDigits, seq)
}

// parseSeqKey returns the sequence number of a key named by seqKey.
func parseSeqKey(prefix, dir, key string) (uint64, bool) {
	s, ok := strings.CutPrefix(key, prefix+dir)
	if !ok || len(s) != seqDigits {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 16, 64)
	return n, err == nil
}

// Meta is the image's parameters, stored as JSON in P/meta.
type Meta struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	// ID tells images apart, so a journal is never replayed into another.
	ID   string `json:"id"`
	Size int64  `json:"size"`
	// Window bounds how far past its lowest unfinished log object a writer
	// may write; a taker decides every sequence number up to its first
	// claim plus Window (docs/s3.md "Fencing").
	Window uint64 `json:"window"`
	// Base names the sealed snapshot a clone reads through to, as
	// s3://BUCKET/PREFIX@SNAPSHOT ("" for none). BaseID and
	// BaseCheckpoint are the base image's ID and the checkpoint the
	// snapshot pinned when the clone was made: a base replaced since is
	// refused, never read.
	Base           string `json:"base,omitempty"`
	BaseID         string `json:"base_id,omitempty"`
	BaseCheckpoint uint64 `json:"base_checkpoint,omitempty"`
}

const (
	maxSize       = 1 << 60
	defaultWindow = 16
	maxWindow     = 1024
)

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, corrupt("meta: %v", err)
	}
	switch {
	case m.Format != formatName:
		return Meta{}, corrupt("meta: format %q, want %q", m.Format, formatName)
	case m.Version != formatV1:
		return Meta{}, fmt.Errorf("meta: format version %d is not supported (this nbdd reads %d)", m.Version, formatV1)
	case m.Size <= 0 || m.Size > maxSize:
		return Meta{}, corrupt("meta: size %d", m.Size)
	case m.Window < 1 || m.Window > maxWindow:
		return Meta{}, corrupt("meta: window %d", m.Window)
	case m.ID == "" || len(m.ID) > 64:
		return Meta{}, corrupt("meta: id %q", m.ID)
	}
	if m.Base != "" {
		r, err := ParseRef(m.Base)
		if err != nil || r.Snapshot == "" || m.BaseID == "" {
			return Meta{}, corrupt("meta: base %q (id %q): want s3://BUCKET/PREFIX@SNAPSHOT and the base's id", m.Base, m.BaseID)
		}
	}
	return m, nil
}

// Epoch identifies a writer. Writers are ordered by (N, Nonce); the nonce
// breaks the tie between two writers that claimed at once.
type Epoch struct {
	N     uint64
	Nonce uint64
}

// Less orders epochs.
func (e Epoch) Less(o Epoch) bool {
	return e.N < o.N || e.N == o.N && e.Nonce < o.Nonce
}

func (e Epoch) String() string { return fmt.Sprintf("%d/%016x", e.N, e.Nonce) }

// extKind is what an extent holds.
type extKind uint8

const (
	kindData extKind = 1 // bytes in a segment
	kindZero extKind = 2 // zeroes, allocated (WRITE_ZEROES with NO_HOLE)
	kindHole extKind = 3 // zeroes, unallocated (TRIM, WRITE_ZEROES)
)

func (k extKind) valid() bool { return k >= kindData && k <= kindHole }

// objKind is what a log object is.
type objKind uint8

const (
	objSegment objKind = 1 // extents, with their data after the header
	objClaim   objKind = 2 // a writer's claim of its epoch (no extents)
	objClose   objKind = 3 // a clean close: no writer holds the image
)

// logExtent is one entry of a segment header: the bytes at export offset
// Off, Len long, are (for data) at DataOff in the segment's data region,
// with CRC-32C CRC.
type logExtent struct {
	Off, Len int64
	DataOff  int64
	CRC      uint32
	Kind     extKind
}

// logHeader heads every log object.
//
//	 0 magic "NBDDLOG1"
//	 8 kind u8, 3 reserved
//	12 header length u32 (including the trailing CRC)
//	16 seq u64
//	24 epoch u64, 32 nonce u64
//	40 extent count u32, 4 reserved
//	48 data length u64
//	56 extents, 32 bytes each: off u64, len u64, dataOff u64, crc u32, kind u8, 3 reserved
//	.. CRC-32C u32 of everything before it
//
// The data region (the segment's journal file) follows the header.
type logHeader struct {
	Kind    objKind
	Seq     uint64
	Epoch   Epoch
	DataLen int64
	Extents []logExtent
}

const (
	logMagic       = "NBDDLOG1"
	logFixedSize   = 56
	logExtentSize  = 32
	maxLogExtents  = 1 << 22
	maxSegmentData = 1 << 32
)

func (h *logHeader) size() int { return logFixedSize + len(h.Extents)*logExtentSize + 4 }

func (h *logHeader) appendBinary(b []byte) []byte {
	start := len(b)
	b = append(b, logMagic...)
	b = append(b, byte(h.Kind), 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(h.size()))
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = binary.BigEndian.AppendUint64(b, h.Epoch.N)
	b = binary.BigEndian.AppendUint64(b, h.Epoch.Nonce)
	b = binary.BigEndian.AppendUint32(b, uint32(len(h.Extents)))
	b = append(b, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(h.DataLen))
	for _, e := range h.Extents {
		b = binary.BigEndian.AppendUint64(b, uint64(e.Off))
		b = binary.BigEndian.AppendUint64(b, uint64(e.Len))
		b = binary.BigEndian.AppendUint64(b, uint64(e.DataOff))
		b = binary.BigEndian.AppendUint32(b, e.CRC)
		b = append(b, byte(e.Kind), 0, 0, 0)
	}
	return binary.BigEndian.AppendUint32(b, crc32c(b[start:]))
}

// logHeaderSize returns the header length announced by the first
// logFixedSize bytes of a log object.
func logHeaderSize(b []byte) (int, error) {
	if len(b) < logFixedSize || string(b[:8]) != logMagic {
		return 0, corrupt("log object: bad magic")
	}
	n := binary.BigEndian.Uint32(b[12:])
	if n < logFixedSize+4 || n > logFixedSize+maxLogExtents*logExtentSize+4 {
		return 0, corrupt("log object: header length %d", n)
	}
	return int(n), nil
}

// decodeLogHeader parses a whole log header. size is the export size,
// which every extent must lie within.
func decodeLogHeader(b []byte, size int64) (*logHeader, error) {
	n, err := logHeaderSize(b)
	if err != nil {
		return nil, err
	}
	if len(b) < n {
		return nil, corrupt("log object: header of %d bytes cut at %d", n, len(b))
	}
	b = b[:n]
	if got, want := crc32c(b[:n-4]), binary.BigEndian.Uint32(b[n-4:]); got != want {
		return nil, corrupt("log object: header CRC %08x, want %08x", got, want)
	}
	h := &logHeader{
		Kind:    objKind(b[8]),
		Seq:     binary.BigEndian.Uint64(b[16:]),
		Epoch:   Epoch{binary.BigEndian.Uint64(b[24:]), binary.BigEndian.Uint64(b[32:])},
		DataLen: int64(binary.BigEndian.Uint64(b[48:])),
	}
	count := int(binary.BigEndian.Uint32(b[40:]))
	if h.Kind < objSegment || h.Kind > objClose {
		return nil, corrupt("log object %d: kind %d", h.Seq, h.Kind)
	}
	if logFixedSize+count*logExtentSize+4 != n {
		return nil, corrupt("log object %d: %d extents in a %d-byte header", h.Seq, count, n)
	}
	if h.DataLen < 0 || h.DataLen > maxSegmentData {
		return nil, corrupt("log object %d: data length %d", h.Seq, h.DataLen)
	}
	h.Extents = make([]logExtent, count)
	for i := range h.Extents {
		p := b[logFixedSize+i*logExtentSize:]
		e := logExtent{
			Off:     int64(binary.BigEndian.Uint64(p)),
			Len:     int64(binary.BigEndian.Uint64(p[8:])),
			DataOff: int64(binary.BigEndian.Uint64(p[16:])),
			CRC:     binary.BigEndian.Uint32(p[24:]),
			Kind:    extKind(p[28]),
		}
		if err := e.check(size, h.DataLen); err != nil {
			return nil, fmt.Errorf("log object %d extent %d: %w", h.Seq, i, err)
		}
		h.Extents[i] = e
	}
	return h, nil
}

// check reports an extent that does not fit the export or its segment.
func (e logExtent) check(size, dataLen int64) error {
	switch {
	case !e.Kind.valid():
		return corrupt("kind %d", e.Kind)
	case e.Off < 0 || e.Len <= 0 || e.Off > size || e.Len > size-e.Off:
		return corrupt("range %d+%d outside the %d-byte export", e.Off, e.Len, size)
	case e.Kind == kindData && (e.DataOff < 0 || e.DataOff > dataLen || e.Len > dataLen-e.DataOff):
		return corrupt("data %d+%d outside the segment's %d bytes", e.DataOff, e.Len, dataLen)
	}
	return nil
}
