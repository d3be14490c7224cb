package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// TestGoNBDIssue6Connections: go-nbd issue 6's case, 384 connections of
// one local program over one unix socket, is served under nbdd's default
// flags (it was refused past 256 when every unix peer counted as one
// host), each connection doing a verified round trip; and the log names
// unix peers by pid and uid. (The memory side of the case, 384 × 32 MiB
// READs, is bench/strategies.sh case (c): docs/operations.md.)
func TestGoNBDIssue6Connections(t *testing.T) {
	const conns = 384
	s := startNBDD(t, "--memory", "disk=16M")
	clients := make([]*rawClient, conns)
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := openRaw(s.sock, "disk")
			if err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
	})
	for err := range errs {
		t.Fatalf("with default flags, of %d connections on one unix socket: %v\nstderr:\n%s", conns, err, s.stderr)
	}
	// Every connection open at once, each then does I/O of its own.
	for i, c := range clients {
		data := []byte(strings.Repeat(fmt.Sprintf("%08d", i), 512))
		off := uint64(i) * 4096
		if errno, _ := c.mustDo(t, protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Offset: off, Length: 4096}, data); errno != protocol.EOK {
			t.Fatalf("connection %d: WRITE: %v", i, errno)
		}
		readBack(t, c, off, data, fmt.Sprintf("connection %d of %d", i, conns))
	}
	want := fmt.Sprintf("pid=%d uid=%d", os.Getpid(), os.Getuid())
	if !s.stderr.waitFor(want, 5*time.Second) {
		t.Errorf("log names no unix peer by %q:\n%.2000s", want, s.stderr)
	}
	if strings.Contains(s.stderr.String(), "connection refused") {
		t.Errorf("a connection was refused under the default limits:\n%.2000s", s.stderr)
	}
}
