package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

const (
	shutBlock  = 16 << 10
	shutBlocks = 1024 // 16 MiB written by the Go client; fio gets the next 16 MiB
	shutDepth  = 32
)

// TestGracefulShutdown proves the graceful shutdown: with fio and a
// Go client each keeping 32 slow writes in flight on a file export,
// SIGTERM makes nbdd stop accepting, finish what is in flight, refuse new
// requests with ESHUTDOWN (or close), and exit 0; and every write it
// acknowledged is in the image file. The Go client knows exactly which
// blocks were acknowledged, so the check is exact: each block carries its
// own index and a fill byte derived from it.
func TestGracefulShutdown(t *testing.T) {
	requireTool(t, "fio")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		img := sparseFile(t, t.TempDir(), 2*shutBlocks*shutBlock)
		// Each write takes 300 ms, so writes are surely in flight when
		// SIGTERM arrives even if the client's goroutines are starved of
		// CPU for a while (go test runs packages in parallel on 2 cores).
		s := startNBDD(t, "--strategy", strategy, "--export", "disk="+img,
			"--fault", "write:delay=300ms", "--shutdown-timeout", "5s")

		c := dialRaw(t, s.sock, "disk")
		w := &blockWriter{c: c, term: make(chan struct{})}
		w.start()

		ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
		defer cancel()
		fio := exec.CommandContext(ctx, "fio", "--ioengine=nbd", "--uri="+s.unixURI(t, "disk"),
			"--name=load", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--offset=16m", "--size=16m",
			"--time_based", "--runtime=60")
		fio.Dir = t.TempDir()
		fioOut := &syncBuffer{}
		fio.Stdout, fio.Stderr = fioOut, fioOut
		if err := fio.Start(); err != nil {
			t.Fatal(err)
		}
		fioDone := make(chan error, 1)
		go func() { fioDone <- fio.Wait() }()

		// Both clients writing: the Go client's writes acknowledged, and
		// fio's landing in its half of the image.
		deadline := time.Now().Add(startTimeout)
		for w.acks() < shutDepth || !fioWrote(t, img) {
			if time.Now().After(deadline) {
				t.Fatalf("clients not running after %v: %d acks; fio:\n%s", startTimeout, w.acks(), fioOut)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// All shutDepth writes take the same 300 ms, so they complete in
		// batches, with a moment between two batches when nothing is in
		// flight and Shutdown rightly closes the connection at once.
		// SIGTERM must land inside a batch: wait for one to complete,
		// then 100 ms into the next.
		for n := w.acks(); w.acks() == n; time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no write acknowledged for %v", startTimeout)
			}
		}
		time.Sleep(100 * time.Millisecond)
		close(w.term)
		s.terminate(t)
		if !s.stderr.waitFor("shutting down", stopTimeout) {
			t.Fatalf("no \"shutting down\" log within %v of SIGTERM", stopTimeout)
		}
		checkRefused(t, s.sock)
		s.stop(t) // already signalled: waits, and requires exit status 0
		c.conn.Close()
		w.wait()
		select {
		case <-fioDone:
		case <-time.After(stopTimeout):
			fio.Process.Kill()
			t.Errorf("fio still running %v after nbdd exited", stopTimeout)
		}

		r := w.result()
		t.Logf("%s: %d writes acknowledged (%d after SIGTERM), %d refused with ESHUTDOWN", strategy, len(r.acked), r.ackedAfterTerm, r.refused)
		for _, msg := range r.bad {
			t.Error(msg)
		}
		if r.ackedAfterTerm == 0 {
			t.Errorf("no write acknowledged after SIGTERM; want the %d in flight to finish", shutDepth)
		}
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		lost := 0
		for i := range r.acked {
			off := i * shutBlock
			if !bytes.Equal(data[off:off+shutBlock], blockPattern(i)) {
				lost++
				if lost <= 5 {
					t.Errorf("acknowledged block %d (offset %d) is not in the image", i, off)
				}
			}
		}
		if lost > 0 {
			t.Errorf("%d of %d acknowledged writes lost", lost, len(r.acked))
		}
	})
}

// checkRefused checks that a connection opened after nbdd logged
// "shutting down" is not served: the dial or the handshake fails
// (NBD_REP_ERR_SHUTDOWN), or, if the handshake raced ahead of the
// shutdown, its first request gets NBD_ESHUTDOWN or a closed connection.
func checkRefused(t *testing.T, sock string) {
	t.Helper()
	late, err := openRaw(sock, "disk")
	if err != nil {
		t.Logf("connection after SIGTERM refused: %v", err)
		return
	}
	defer late.conn.Close()
	late.conn.SetDeadline(time.Now().Add(stopTimeout))
	errno, _, err := late.do(protocol.Request{Type: protocol.CmdRead, Cookie: 9, Length: 512}, nil)
	if err == nil && errno != protocol.ESHUTDOWN {
		t.Errorf("READ on a connection opened after SIGTERM: %v; want NBD_ESHUTDOWN or a refused connection", errno)
	}
}

// fioWrote reports whether fio's half of the image holds any data yet.
func fioWrote(t *testing.T, img string) bool {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, shutBlocks*shutBlock)
	if _, err := f.ReadAt(buf, shutBlocks*shutBlock); err != nil {
		t.Fatal(err)
	}
	return bytes.ContainsFunc(buf, func(r rune) bool { return r != 0 })
}

// blockPattern is the content of block i: its index, then a fill byte.
func blockPattern(i int) []byte {
	b := bytes.Repeat([]byte{byte(i*7 + 1)}, shutBlock)
	binary.BigEndian.PutUint64(b, uint64(i)+1)
	return b
}

// blockWriter keeps shutDepth WRITEs of distinct blocks in flight on c and
// records every reply.
type blockWriter struct {
	c    *rawClient
	term chan struct{} // closed when SIGTERM is about to be sent
	wg   sync.WaitGroup

	mu             sync.Mutex
	acked          map[int]bool
	ackedAfterTerm int
	refused        int
	bad            []string
}

type blockResult struct {
	acked          map[int]bool
	ackedAfterTerm int
	refused        int
	bad            []string
}

func (w *blockWriter) start() {
	w.acked = map[int]bool{}
	slots := make(chan struct{}, shutDepth)
	readerDone := make(chan struct{})
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		for i := 0; i < shutBlocks; i++ {
			select {
			case slots <- struct{}{}:
			case <-readerDone:
				return
			}
			req := protocol.Request{Type: protocol.CmdWrite, Cookie: uint64(i) + 1, Offset: uint64(i) * shutBlock, Length: shutBlock}
			if w.c.send(req, blockPattern(i)) != nil {
				return
			}
		}
	}()
	go func() {
		defer w.wg.Done()
		defer close(readerDone)
		for {
			r, _, err := w.c.reply()
			if err != nil {
				return
			}
			<-slots
			w.record(r)
		}
	}()
}

func (w *blockWriter) record(r protocol.SimpleReply) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := int(r.Cookie) - 1
	switch {
	case i < 0 || i >= shutBlocks:
		w.bad = append(w.bad, "reply with unknown cookie "+strconv.FormatUint(r.Cookie, 10))
	case w.acked[i]:
		w.bad = append(w.bad, "second reply for block "+strconv.FormatUint(r.Cookie, 10))
	case r.Error == protocol.EOK:
		w.acked[i] = true
		select {
		case <-w.term:
			w.ackedAfterTerm++
		default:
		}
	case r.Error == protocol.ESHUTDOWN:
		w.refused++
	default:
		w.bad = append(w.bad, "block "+strconv.FormatUint(r.Cookie, 10)+": "+r.Error.String()+"; want success or NBD_ESHUTDOWN")
	}
}

func (w *blockWriter) acks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *blockWriter) wait() { w.wg.Wait() }

func (w *blockWriter) result() blockResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	return blockResult{acked: w.acked, ackedAfterTerm: w.ackedAfterTerm, refused: w.refused, bad: w.bad}
}

// TestSecondSignal checks that a second SIGTERM ends nbdd at once, even
// with a request stuck in the backend.
func TestSecondSignal(t *testing.T) {
	s := startNBDD(t, "--memory", "disk=2M", "--fault", "read:0-4K:delay=30s", "--shutdown-timeout", "30s")
	c := dialRaw(t, s.sock, "disk")
	if err := c.send(protocol.Request{Type: protocol.CmdRead, Cookie: 1, Length: 512}, nil); err != nil {
		t.Fatal(err)
	}
	// The reply to a fast READ sent second proves the slow one was read
	// and is in flight.
	if errno, _ := c.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: 2, Offset: 1 << 20, Length: 512}, nil); errno != protocol.EOK {
		t.Fatalf("fast READ behind a slow one: %v; want success", errno)
	}
	s.exited = true // this test checks the exit itself
	s.terminate(t)
	if !s.stderr.waitFor("shutting down", stopTimeout) {
		t.Fatalf("no \"shutting down\" log within %v of SIGTERM", stopTimeout)
	}
	if s.exitedWithin(500 * time.Millisecond) {
		t.Fatalf("nbdd exited (%v) with a 30 s read in flight and a 30 s shutdown timeout; want it to wait", s.wait())
	}
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if !s.exitedWithin(3 * time.Second) {
		s.cmd.Process.Kill()
		t.Fatalf("nbdd still running 3 s after a second SIGTERM")
	}
	t.Logf("second SIGTERM: exit after %v (%v)", time.Since(start), s.wait())
}
