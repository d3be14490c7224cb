package server_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/bufstrategy"
	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
)

// benchExportSize is the memory export the benchmarks read and write.
const benchExportSize = 256 << 20

// plain hides every optional capability of a backend, as a backend
// written for go-nbd has none: every payload then goes through the buffer
// strategy, which the memory export's lent pages bypass.
type plain struct{ backend.Backend }

// benchExports are the exports the benchmarks serve: "plain", whose
// payloads all go through the strategy's buffers, and "memory", a
// backend.Memory that lends its pages for READs and WRITEs.
var benchExports = map[string]func() backend.Backend{
	"plain":  func() backend.Backend { return plain{backend.NewMemory(benchExportSize)} },
	"memory": func() backend.Backend { return backend.NewMemory(benchExportSize) },
}

// BenchmarkTransmission measures READ and WRITE throughput and allocations
// over a unix socket, per buffer strategy, request size and queue depth, on
// the plain export; and on the memory export under the default strategy
// (it uses no buffers, so the strategy does not matter there). The client
// pipelines up to depth requests, as the kernel and libnbd do.
func BenchmarkTransmission(b *testing.B) {
	for _, export := range []string{"plain", "memory"} {
		for _, strategy := range bufstrategy.Names() {
			if export == "memory" && strategy != bufstrategy.NamePool {
				continue
			}
			for _, size := range []int{4 << 10, 128 << 10, 1 << 20, 32 << 20} {
				for _, depth := range []int{1, 32} {
					for _, cmd := range []protocol.Cmd{protocol.CmdRead, protocol.CmdWrite} {
						name := fmt.Sprintf("%s/%s/%s/%dKiB/qd%d", export, strategy, cmdName(cmd), size>>10, depth)
						b.Run(name, func(b *testing.B) { benchTransmission(b, export, strategy, cmd, size, depth) })
					}
				}
			}
		}
	}
}

// BenchmarkAlternating writes 128 KiB and 4 KiB requests in turn at queue
// depth 1, per strategy, on the plain export: the workload that makes
// resize-on-mismatch reallocate on every request (one op is the pair).
func BenchmarkAlternating(b *testing.B) {
	for _, strategy := range bufstrategy.Names() {
		b.Run(strategy, func(b *testing.B) {
			cl := startBench(b, "plain", strategy, 1)
			cl.prefill(b, 0)
			b.SetBytes(132 << 10)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cl.run(b, protocol.CmdWrite, 128<<10, 1, 1)
				cl.run(b, protocol.CmdWrite, 4<<10, 1, 1)
			}
		})
	}
}

func cmdName(c protocol.Cmd) string {
	if c == protocol.CmdRead {
		return "read"
	}
	return "write"
}

func benchTransmission(b *testing.B, export, strategy string, cmd protocol.Cmd, size, depth int) {
	cl := startBench(b, export, strategy, depth)
	cl.prefill(b, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	cl.run(b, cmd, size, depth, b.N)
}

// startBench serves one of benchExports with strategy on a unix socket and
// connects a client to it.
func startBench(b *testing.B, export, strategy string, depth int) *benchClient {
	bufs, err := bufstrategy.New(strategy, bufstrategy.Config{})
	if err != nil {
		b.Fatal(err)
	}
	srv := &server.Server{
		Exports:    []server.Export{{Name: "m", Backend: benchExports[export]()}},
		Buffers:    bufs,
		QueueDepth: max(depth, 1),
		Logger:     slog.New(slog.DiscardHandler),
	}
	sock := filepath.Join(b.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	b.Cleanup(func() { srv.Close() })
	cl := dialBench(b, sock)
	b.Cleanup(func() { cl.Close() })
	return cl
}

// benchClient drives the benchmarks: a pipelining loop of simple
// requests and replies that allocates nothing, so that allocs/op are the
// server's.
type benchClient struct {
	net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func dialBench(b *testing.B, sock string) *benchClient {
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	// The handshake by nbdd's client, which reads nothing past it; the
	// benchmark's own loop then pipelines requests without allocating.
	nbd := nbdclient.Unbuffered(c)
	if _, err := nbd.Start(); err != nil {
		b.Fatal(err)
	}
	if _, err := nbd.ExportName("m", true); err != nil {
		b.Fatal(err)
	}
	return &benchClient{Conn: c, br: bufio.NewReaderSize(c, 1<<20), bw: bufio.NewWriterSize(c, 1<<20)}
}

// prefill writes the export once so reads touch allocated memory.
func (cl *benchClient) prefill(b *testing.B, size int) {
	cl.run(b, protocol.CmdWrite, 1<<20, 8, benchExportSize>>20)
}

// run sends n requests, keeping up to depth in flight, and reads every
// reply.
func (cl *benchClient) run(b *testing.B, cmd protocol.Cmd, size, depth, n int) {
	done := make(chan error, 1)
	window := make(chan struct{}, depth)
	go func() { done <- cl.readReplies(cmd, size, n, window) }()
	payload := make([]byte, size)
	var hdr [protocol.RequestSize]byte
	slots := benchExportSize / size
	for i := 0; i < n; i++ {
		window <- struct{}{}
		off := uint64((i*7919)%slots) * uint64(size)
		protocol.Request{Type: cmd, Cookie: uint64(i), Offset: off, Length: uint32(size)}.Put(&hdr)
		cl.bw.Write(hdr[:])
		if cmd == protocol.CmdWrite {
			cl.bw.Write(payload)
		}
		if len(window) == depth || i == n-1 {
			if err := cl.bw.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func (cl *benchClient) readReplies(cmd protocol.Cmd, size, n int, window chan struct{}) error {
	var hdr [protocol.SimpleReplySize]byte
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(cl.br, hdr[:]); err != nil {
			return err
		}
		r, err := protocol.DecodeSimpleReply(&hdr)
		if err != nil || r.Error != 0 {
			return fmt.Errorf("reply %d: %v %v", i, r.Error, err)
		}
		if cmd == protocol.CmdRead {
			if _, err := cl.br.Discard(size); err != nil {
				return err
			}
		}
		<-window
	}
	return nil
}
