package e2e

import (
	"strings"
	"testing"

	"github.com/nbdd/nbdd/protocol"
)

// faultSpec fails reads of the second MiB and writes of the fifth with
// EIO, and makes reads of the seventh MiB short (backend/faultspec.go).
const faultSpec = "read:1M-2M:eio,write:4M-5M:eio,read:6M-7M:short"

// TestBackendFaults proves the backend-fault promise through libnbd
// (structured replies): a backend error reaches the client as EIO for the
// requests that touch the faulty range only, and the connection and other
// connections go on (testdata/faults.py).
func TestBackendFaults(t *testing.T) {
	requireTool(t, "nbdsh")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--memory", "disk=32M", "--fault", faultSpec)
		nbdsh(t, s.unixURI(t, "disk"), "faults.py")
	})
}

// TestBackendFaultsSimpleReplies repeats the read faults over simple
// replies with the raw client. There a READ whose data has started to go
// out cannot report an error any more, so a strategy that streams (stream)
// may disconnect instead (proto.md "Simple reply message"); every other
// strategy must answer EIO and keep the connection. Either way no success
// header may precede bad data, and a new connection must be served.
func TestBackendFaultsSimpleReplies(t *testing.T) {
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--memory", "disk=32M", "--fault", faultSpec)
		for _, tc := range []struct {
			name string
			req  protocol.Request
		}{
			{"in range", protocol.Request{Type: protocol.CmdRead, Cookie: 5, Offset: 1 << 20, Length: 4096}},
			{"from before the range", protocol.Request{Type: protocol.CmdRead, Cookie: 6, Offset: 512 << 10, Length: 1 << 20}},
			{"short", protocol.Request{Type: protocol.CmdRead, Cookie: 7, Offset: 6 << 20, Length: 1 << 20}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dialRaw(t, s.sock, "disk")
				errno, _, err := c.do(tc.req, nil)
				switch {
				case err != nil && strategy == "stream":
					t.Logf("stream: READ %s ended the connection (%v), as simple replies allow", tc.name, err)
				case err != nil:
					t.Errorf("READ %s: %v; want an EIO reply on a live connection", tc.name, err)
				case errno != protocol.EIO:
					t.Errorf("READ %s: %v; want NBD_EIO", tc.name, errno)
				default:
					roundTrip(t, c, 3, "same connection after a failed READ "+tc.name)
				}
				roundTrip(t, dialRaw(t, s.sock, "disk"), 4, "new connection after a failed READ "+tc.name)
			})
		}
	})
}

// TestFlushFault checks that a failing fdatasync reaches the client: FLUSH
// gets EIO rather than being swallowed, and the flush nbdd does at
// shutdown fails the exit status.
func TestFlushFault(t *testing.T) {
	requireTool(t, "nbdsh")
	img := sparseFile(t, t.TempDir(), 4<<20)
	s := startNBDD(t, "--export", "disk="+img, "--fault", "sync:eio")
	nbdsh(t, s.unixURI(t, "disk"), "flushfault.py")
	s.exited = true // the exit status is checked here instead
	s.terminate(t)
	if !s.exitedWithin(stopTimeout) {
		t.Fatalf("nbdd still running %v after SIGTERM", stopTimeout)
	}
	err := s.wait()
	if err == nil {
		t.Fatalf("nbdd exited 0 after its shutdown flush failed; want a non-zero status\nstderr:\n%s", s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "sync") {
		t.Errorf("nbdd stderr does not name the failed sync:\n%s", s.stderr)
	}
	t.Logf("nbdd after a failed shutdown flush: %v", err)
}
