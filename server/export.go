package server

import (
	"fmt"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
)

// An Export is a named block device that clients select in the handshake.
type Export struct {
	// Name is what clients ask for. The empty name selects the server's
	// default export (see Server.DefaultExport).
	Name string
	// Description is sent as NBD_INFO_DESCRIPTION and in NBD_OPT_LIST.
	Description string
	// Backend holds the data.
	Backend backend.Backend
	// ReadOnly refuses WRITE, TRIM and WRITE_ZEROES with NBD_EPERM and
	// advertises NBD_FLAG_READ_ONLY, whatever the backend can do.
	ReadOnly bool
	// TLSOnly hides the export from clients that have not negotiated TLS
	// (proto.md "SELECTIVETLS").
	TLSOnly bool
	// Access limits which clients may use the export, by address and by
	// client certificate, besides Server.Access; the zero value allows
	// every client the server admits.
	Access Access
}

// ExportSource resolves export names that are not in Server.Exports, such
// as the files of a directory export. Open returns (nil, nil, nil) for an
// unknown name. The returned close function is called when the connection
// that opened the export ends.
type ExportSource interface {
	Open(name string) (*Export, func() error, error)
	// List returns the exports to announce in NBD_OPT_LIST.
	List() ([]Export, error)
}

// caps are an export's capabilities, discovered once per connection by type
// assertion (as net/http discovers http.Flusher), and the transmission flags
// they imply (proto.md "Transmission flags").
type caps struct {
	size      uint64
	readOnly  bool
	flusher   bool
	trimmer   backend.Trimmer
	zeroer    backend.Zeroer
	fastZero  bool
	cacher    backend.Cacher
	fua       backend.FUAWriter
	extenter  backend.Extenter
	multiConn bool
	minBlock  uint32
	// nonBlocking backends run small requests inline on the reader;
	// syncWaits ones (backend.SyncWaiter) except FLUSH and FUA writes.
	nonBlocking bool
	syncWaits   bool
	viewer      backend.Viewer
	writeViewer backend.WriteViewer
	// file is the export's file, whose READs go out with sendfile(2) when
	// their range is in the page cache (see conn.sendsFile); nil if the
	// backend is not a file.
	file cachedFile
	// pipeWriter takes large WRITE payloads with splice(2) (splice.go).
	pipeWriter backend.PipeWriter
	// cachedReader answers small READs of cached data on the reader
	// (cached.go); nil for backends that never block, which run them
	// there anyway.
	cachedReader backend.CachedReader
	// dataKnower tells, without a system call, that a range of the file
	// holds no holes (backend.File.KnownData); nil if the backend cannot.
	dataKnower interface{ KnownData(off, n int64) bool }
}

// openExport is the export a connection has selected.
type openExport struct {
	*Export
	caps
	close func() error // nil for static exports
}

func discoverCaps(e *Export) (caps, error) {
	size, err := e.Backend.Size()
	if err != nil {
		return caps{}, fmt.Errorf("export %q: size: %w", e.Name, err)
	}
	if size < 0 {
		return caps{}, fmt.Errorf("export %q: negative size %d", e.Name, size)
	}
	c := caps{size: uint64(size), readOnly: e.ReadOnly, flusher: true, minBlock: 1}
	if ro, ok := e.Backend.(backend.ReadOnlyer); ok && ro.ReadOnly() {
		c.readOnly = true
	}
	c.trimmer, _ = e.Backend.(backend.Trimmer)
	c.zeroer, _ = e.Backend.(backend.Zeroer)
	if fz, ok := e.Backend.(backend.FastZeroer); ok {
		c.fastZero = fz.CanFastZero()
	}
	c.cacher, _ = e.Backend.(backend.Cacher)
	c.fua, _ = e.Backend.(backend.FUAWriter)
	c.extenter, _ = e.Backend.(backend.Extenter)
	c.viewer, _ = e.Backend.(backend.Viewer)
	c.writeViewer, _ = e.Backend.(backend.WriteViewer)
	if mc, ok := e.Backend.(backend.MultiConner); ok {
		c.multiConn = mc.CanMultiConn()
	}
	if nb, ok := e.Backend.(backend.NonBlocker); ok {
		c.nonBlocking = nb.NonBlocking()
	}
	if sw, ok := e.Backend.(backend.SyncWaiter); ok {
		c.syncWaits = sw.SyncWaits()
	}
	c.file, _ = e.Backend.(cachedFile)
	c.dataKnower, _ = e.Backend.(interface{ KnownData(off, n int64) bool })
	if !c.nonBlocking {
		c.cachedReader, _ = e.Backend.(backend.CachedReader)
	}
	if pw, ok := e.Backend.(backend.PipeWriter); ok && pw.CanWriteFromPipe() {
		c.pipeWriter = pw
	}
	if bs, ok := e.Backend.(backend.BlockSizer); ok && bs.MinBlockSize() > 1 {
		c.minBlock = bs.MinBlockSize()
		// proto.md "Block size constraints": a power of 2, at most 64 KiB.
		if c.minBlock&(c.minBlock-1) != 0 || c.minBlock > 64<<10 {
			return caps{}, fmt.Errorf("export %q: the backend's minimum block size %d is not a power of 2 up to 64 KiB", e.Name, c.minBlock)
		}
	}
	return c, nil
}

// flags are the transmission flags for the export. Writes are emulated where
// the backend lacks a capability (WRITE_ZEROES by writing zeroes, FUA by a
// Sync), so only TRIM depends on the backend; everything that changes data
// is withdrawn from a read-only export.
func (c *caps) flags(structured bool) protocol.TransmissionFlag {
	f := protocol.FlagHasFlags | protocol.FlagSendFlush | protocol.FlagSendCache
	if c.multiConn {
		f |= protocol.FlagCanMultiConn
	}
	if structured {
		f |= protocol.FlagSendDF
	}
	if c.readOnly {
		return f | protocol.FlagReadOnly
	}
	f |= protocol.FlagSendFUA | protocol.FlagSendWriteZeroes
	if c.trimmer != nil {
		f |= protocol.FlagSendTrim
	}
	if c.fastZero {
		f |= protocol.FlagSendFastZero
	}
	return f
}
