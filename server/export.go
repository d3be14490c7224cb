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

	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN (clients may open
	// several connections and expect a FLUSH on one to cover writes
	// acknowledged on all; proto.md "Transmission flags") even when the
	// backend does not say so through backend.MultiConner: go-nbd's
	// SupportsMultiConn, which its servers set by default.
	MultiConn bool
	// MinBlockSize, PreferredBlockSize and MaxBlockSize are the block
	// size constraints announced in NBD_INFO_BLOCK_SIZE (proto.md "Block
	// size constraints"); 0 means the default: the backend's minimum
	// (backend.BlockSizer) or 1, then 4096 or the minimum if larger, then
	// Server.MaxRequestSize. Minimum and preferred are powers of 2 (the
	// minimum at most 64 KiB), the preferred at least the minimum, and
	// the maximum, capped at Server.MaxRequestSize, a multiple of the
	// minimum. READs and WRITEs that break the minimum or maximum get
	// NBD_EINVAL.
	MinBlockSize, PreferredBlockSize, MaxBlockSize uint32
	// SerialBackend calls the backend one request at a time, as go-nbd
	// called its backends, for backends that are not safe for concurrent
	// use. nbdd otherwise calls a backend from several goroutines at once
	// (io.ReaderAt and io.WriterAt allow it; backend.Backend says what is
	// expected). Requests are still read and answered in a pipeline; only
	// the backend calls wait for each other, across all the export's
	// connections. The paths that call a backend from elsewhere (lent
	// memory, sendfile, splice) are not used.
	SerialBackend bool
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

// caps are an export's capabilities and accelerators (package backend),
// discovered once per connection by type assertion (as net/http discovers
// http.Flusher), and the transmission flags they imply (proto.md
// "Transmission flags"). The planner reads them (plan.go).
type caps struct {
	size     uint64
	readOnly bool
	// preferredBlock and maxBlock are announced with minBlock in
	// NBD_INFO_BLOCK_SIZE; maxBlock 0 means the server's maximum.
	preferredBlock, maxBlock uint32
	flusher                  bool
	trimmer                  backend.Trimmer
	zeroer                   backend.Zeroer
	fastZero                 bool
	cacher                   backend.Cacher
	fua                      backend.FUAWriter
	extenter                 backend.Extenter
	multiConn                bool
	minBlock                 uint32
	// nonBlocking backends run small requests inline on the reader;
	// syncWaits ones (backend.SyncWaiter) except FLUSH and FUA writes.
	nonBlocking bool
	syncWaits   bool
	viewer      backend.Viewer
	writeViewer backend.WriteViewer
	// lender lends a READ the buffers of the backend's cache, pinned
	// until the reply is out (backend.Lender).
	lender backend.Lender
	// file is the export's file, whose READs go out with sendfile(2) when
	// their range is in the page cache (plan.go: sendsFile); nil if the
	// backend is not a file.
	file backend.FileSource
	// pipeWriter takes large WRITE payloads with splice(2) (splice.go).
	pipeWriter backend.PipeWriter
	// cachedReader answers small READs of cached data on the reader
	// (plan.go: planCachedRead); nil for backends that never block, which
	// run them there anyway.
	cachedReader backend.CachedReader
	// dataKnower tells, without a system call, that a range of the file
	// holds no holes (backend.File.KnownData); nil if the backend cannot.
	dataKnower backend.DataKnower
}

// mayCache reports whether the page cache may hold the export's data for
// the reader to answer READs from (plan.go: planCachedRead).
func (c *caps) mayCache() bool { return c.file != nil || c.cachedReader != nil }

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
	// Through decorators, only what the backend they wrap can do
	// (backend.Decorator).
	c.trimmer, _ = backend.Has[backend.Trimmer](e.Backend)
	c.zeroer, _ = backend.Has[backend.Zeroer](e.Backend)
	c.cacher, _ = backend.Has[backend.Cacher](e.Backend)
	c.fua, _ = backend.Has[backend.FUAWriter](e.Backend)
	c.extenter, _ = backend.Has[backend.Extenter](e.Backend)
	if fz, ok := e.Backend.(backend.FastZeroer); ok && c.zeroer != nil {
		c.fastZero = fz.CanFastZero()
	}
	c.viewer, _ = e.Backend.(backend.Viewer)
	c.writeViewer, _ = e.Backend.(backend.WriteViewer)
	c.lender, _ = e.Backend.(backend.Lender)
	if mc, ok := e.Backend.(backend.MultiConner); ok {
		c.multiConn = mc.CanMultiConn()
	}
	if nb, ok := e.Backend.(backend.NonBlocker); ok {
		c.nonBlocking = nb.NonBlocking()
	}
	if sw, ok := e.Backend.(backend.SyncWaiter); ok {
		c.syncWaits = sw.SyncWaits()
	}
	c.file, _ = e.Backend.(backend.FileSource)
	c.dataKnower, _ = e.Backend.(backend.DataKnower)
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
	c.multiConn = c.multiConn || e.MultiConn
	if err := c.blockSizes(e); err != nil {
		return caps{}, fmt.Errorf("export %q: %w", e.Name, err)
	}
	return c, nil
}

// blockSizes applies the Export's block size constraints over the
// backend's (proto.md "Block size constraints").
func (c *caps) blockSizes(e *Export) error {
	isPow2 := func(n uint32) bool { return n&(n-1) == 0 }
	if m := e.MinBlockSize; m > 1 {
		if !isPow2(m) || m > 64<<10 {
			return fmt.Errorf("MinBlockSize %d is not a power of 2 up to 64 KiB", m)
		}
		c.minBlock = max(c.minBlock, m)
	}
	c.preferredBlock = max(4096, c.minBlock)
	if p := e.PreferredBlockSize; p != 0 {
		if !isPow2(p) || p < c.minBlock {
			return fmt.Errorf("PreferredBlockSize %d is not a power of 2 of at least the minimum %d", p, c.minBlock)
		}
		c.preferredBlock = p
	}
	if m := e.MaxBlockSize; m != 0 {
		if m%c.minBlock != 0 || m < c.preferredBlock {
			return fmt.Errorf("MaxBlockSize %d is not a multiple of the minimum %d of at least the preferred %d", m, c.minBlock, c.preferredBlock)
		}
		c.maxBlock = m
	}
	return nil
}

// maxRequest is the largest READ or WRITE the export takes, when the
// server's limit is serverMax.
func (c *caps) maxRequest(serverMax uint32) uint32 {
	if c.maxBlock != 0 && c.maxBlock < serverMax {
		return c.maxBlock
	}
	return serverMax
}

// flags are the transmission flags for the export. Writes are emulated where
// the backend lacks a capability (WRITE_ZEROES by writing zeroes, FUA by a
// Sync), so only TRIM depends on the backend; everything that changes data
// is withdrawn from a read-only export; mode withdraws what it does not
// permit (protocol.Mode.TransmissionFlags).
func (c *caps) flags(mode protocol.Mode) protocol.TransmissionFlag {
	f := protocol.FlagHasFlags | protocol.FlagSendFlush | protocol.FlagSendCache | protocol.FlagSendDF
	if c.multiConn {
		f |= protocol.FlagCanMultiConn
	}
	if c.readOnly {
		return mode.TransmissionFlags(f | protocol.FlagReadOnly)
	}
	f |= protocol.FlagSendFUA | protocol.FlagSendWriteZeroes
	if c.trimmer != nil {
		f |= protocol.FlagSendTrim
	}
	if c.fastZero {
		f |= protocol.FlagSendFastZero
	}
	return mode.TransmissionFlags(f)
}
