package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// TestFailedRequestsLogged: a backend error reaches the log at warn with
// what failed (export, command, range, errno, cause); a disk failing
// every request is cut to the connection's budget of lines, the next line
// counting what was left out; and the line that ends the connection
// sums it up. No record repeats a key.
func TestFailedRequestsLogged(t *testing.T) {
	checkLeaks(t)
	rules, err := backend.ParseFaultSpec("read:4096-8191:eio")
	require.NoError(t, err)
	logs := &logRecorder{}
	srv := &Server{Logger: slog.New(logs), Exports: []Export{{Name: "disk", Backend: backend.NewFault(backend.NewMemory(1<<20), rules...)}}}
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.handshake("disk")
	c.write(1, 0, pattern(4096, 1))
	c.wantReply(1, protocol.EOK)
	const failures = 3 * errLogBurst
	for i := range failures {
		c.read(uint64(10+i), 4096, 512)
		c.wantReply(uint64(10+i), protocol.EIO)
	}
	time.Sleep(time.Duration(float64(time.Second) * 1.5 / errLogRate)) // a line's worth of budget comes back
	c.read(100, 4096, 512)
	c.wantReply(100, protocol.EIO)
	c.read(101, 0, 4096)
	c.wantRead(101, pattern(4096, 1))
	c.disc()
	c.wantClosed()
	require.NoError(t, srv.Shutdown(context.Background()))

	failed := logs.find("request failed")
	require.Len(t, failed, errLogBurst+1, "lines for %d failures: a burst, then one more once the budget refilled", failures+1)
	first := failed[0]
	require.Equal(t, "WARN", first["level"])
	for k, v := range map[string]any{"export": "disk", "cmd": "NBD_CMD_READ", "offset": 4096.0, "len": 512.0, "errno": "NBD_EIO"} {
		require.Equal(t, v, first[k], "key %s of %v", k, first)
	}
	require.Contains(t, first["err"], "input/output error")
	require.EqualValues(t, failures-errLogBurst, failed[errLogBurst]["suppressed"], "the line after the cut counts the lines left out")

	summary := logs.find("client disconnected")
	require.Len(t, summary, 1)
	for k, v := range map[string]any{"export": "disk", "requests": float64(failures + 3), "errors": float64(failures + 1), "read_bytes": 4096.0, "written_bytes": 4096.0} {
		require.Equal(t, v, summary[0][k], "summary key %s of %v", k, summary[0])
	}
	require.Contains(t, summary[0], "duration")
	require.Empty(t, logs.duplicates(), "keys repeated within a record")
}

// TestLogBudgetsPerExport: connections to one export share a budget of
// lines as well as each having its own, so many connections to a failing
// disk cannot flood the log either.
func TestLogBudgetsPerExport(t *testing.T) {
	checkLeaks(t)
	rules, err := backend.ParseFaultSpec("read:eio")
	require.NoError(t, err)
	logs := &logRecorder{}
	srv := &Server{Logger: slog.New(logs), Exports: []Export{{Name: "disk", Backend: backend.NewFault(backend.NewMemory(1<<20), rules...)}}}
	sock, _ := serveUnix(t, srv)
	const conns = 5
	for i := range conns {
		c := dialClient(t, sock)
		c.handshake("disk")
		for j := range errLogBurst {
			c.read(uint64(j), 0, 512)
			c.wantReply(uint64(j), protocol.EIO)
		}
		_ = i
		c.disc()
		c.wantClosed()
	}
	require.NoError(t, srv.Shutdown(context.Background()))
	// Each connection's own budget would let all conns × burst through;
	// the export's lets about one burst through (plus what refills while
	// the test runs).
	n := len(logs.find("request failed"))
	require.Less(t, n, 2*errLogBurst, "lines for %d connections × %d failures on one export", conns, errLogBurst)
	require.GreaterOrEqual(t, n, errLogBurst)
}

// TestOptionRefusedKeys: a refused option's line carries its message
// under "reason", not a second "msg".
func TestOptionRefusedKeys(t *testing.T) {
	checkLeaks(t)
	logs := &logRecorder{}
	srv := &Server{Logger: slog.New(logs), Exports: []Export{{Name: "a", Backend: backend.NewMemory(1 << 20)}, {Name: "b", Backend: backend.NewMemory(1 << 20)}}}
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.start()
	_, rep := c.infoOrGoErr(protocol.OptGo, "nope")
	require.Equal(t, protocol.RepErrUnknown, rep.typ)
	c.nc.Close()
	require.NoError(t, srv.Shutdown(context.Background()))
	refused := logs.find("option refused")
	require.Len(t, refused, 1)
	require.Equal(t, `unknown export "nope"`, refused[0]["reason"])
	require.Empty(t, logs.duplicates())
}
