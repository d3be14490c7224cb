// Package server implements an NBD server (proto.md of NetworkBlockDevice/nbd):
// the fixed-newstyle handshake with its options, and the transmission phase
// with many requests in flight per connection and replies that may leave out
// of order.
//
// The shape of a connection follows nbdkit and x/net/http2: one goroutine
// reads and validates requests, checking each against the export size and
// the maximum request size before any buffer is taken; requests run on their
// own goroutines, bounded by the queue depth; one writer goroutine sends each
// reply's header and data together with a single vectored write and
// coalesces replies that are ready at the same time. The reader never waits
// on the writer: when a connection is full it stops reading the socket, and
// TCP pushes back on the client.
//
// A Server's zero value is a working server with no exports. Serve,
// ServeConn and Shutdown follow net/http.
package server
