// Package server implements an NBD server (proto.md of NetworkBlockDevice/nbd):
// the fixed-newstyle handshake with its options, and the transmission phase
// with many requests in flight per connection and replies that may leave out
// of order.
//
// The shape of a connection follows nbdkit and x/net/http2: one goroutine
// reads and validates requests, checking each against the export size and
// the maximum request size before any buffer is taken; requests run on their
// own goroutines, bounded by the queue depth per connection and by
// Server.MaxBackendCalls server-wide, except small requests to backends
// that never block (backend.NonBlocker), which the reader runs itself, and
// READs of file data the page cache holds (backend.CachedReader), which
// it answers itself too. Each reply's header and data go out together in
// one vectored write, and replies that are ready together share it: the
// reader sends the
// replies of a burst of inline requests itself, without waiting, and one
// writer goroutine sends the rest. The reader never waits on the writer:
// when a connection is full it stops reading the socket, and TCP pushes
// back on the client.
//
// Payloads take no buffer where the backend lends its memory: READs are sent
// from it (backend.Viewer), or from the buffers of its cache, pinned until
// the reply is written (backend.Lender), and WRITE payloads are read into
// it (backend.WriteViewer); large READs of file data in the page cache are
// sent with sendfile(2), and large WRITE payloads for files on tmpfs, or
// streamed to any file, are spliced into the file through a pipe
// (backend.PipeWriter). Otherwise buffers come from the buffer strategy
// (Server.Buffers, package bufstrategy) under a server-wide budget.
//
// Server.Stats reports, per export, the requests by command, the error
// replies by errno and the requests and bytes of each data path (Path),
// counted without a lock on the request path, for a metrics exporter to
// read at any time.
//
// docs/architecture.md follows one request through the package: read,
// validate, plan (plan.go decides where it runs and how its data moves),
// run, reply (reply.go owns the socket).
//
// A Server's zero value is a working server with no exports. Serve,
// ServeConn and Shutdown follow net/http.
package server
