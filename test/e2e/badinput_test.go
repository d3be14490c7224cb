package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/nbdd/nbdd/protocol"
)

const (
	badExportSize = 8 << 20
	badMaxRequest = 1 << 20
)

// TestBadRequests sends each malformed or out-of-range request on its own
// raw connection and checks the specified answer: an errno and a
// connection that still works (proto.md "SHOULD return NBD_EINVAL ...
// rather than disconnecting"; a rejected WRITE's payload is drained), or a
// closed connection for framing violations. After each case a second
// connection must still be served.
func TestBadRequests(t *testing.T) {
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--max-request-size", "1M",
			"--memory", "disk=8M", "--memory", "ro=1M,ro")
		end := uint64(badExportSize)
		big := make([]byte, 4096)
		for _, tc := range []struct {
			name    string
			export  string
			req     protocol.Request
			payload []byte
			want    protocol.Errno // EOK: the server must close the connection
			raw     []byte         // sent instead of req when set
		}{
			{name: "read past end", req: protocol.Request{Type: protocol.CmdRead, Offset: end - 512, Length: 1024}, want: protocol.EINVAL},
			{name: "read beyond end", req: protocol.Request{Type: protocol.CmdRead, Offset: end + 4096, Length: 512}, want: protocol.EINVAL},
			{name: "read offset overflow", req: protocol.Request{Type: protocol.CmdRead, Offset: ^uint64(0) - 511, Length: 1024}, want: protocol.EINVAL},
			{name: "write past end", req: protocol.Request{Type: protocol.CmdWrite, Offset: end - 1024, Length: 4096}, payload: big, want: protocol.ENOSPC},
			// proto.md "Error values": ENOSPC for writes past the end, EINVAL for
			// reads and trims.
			{name: "zero past end", req: protocol.Request{Type: protocol.CmdWriteZeroes, Offset: end - 1024, Length: 4096}, want: protocol.ENOSPC},
			{name: "trim past end", req: protocol.Request{Type: protocol.CmdTrim, Offset: end - 1024, Length: 4096}, want: protocol.EINVAL},
			{name: "oversized read", req: protocol.Request{Type: protocol.CmdRead, Length: 2 * badMaxRequest}, want: protocol.EINVAL},
			{name: "unknown command", req: protocol.Request{Type: 99, Length: 512}, want: protocol.EINVAL},
			{name: "unknown flag", req: protocol.Request{Type: protocol.CmdRead, Flags: 1 << 15, Length: 512}, want: protocol.EINVAL},
			{name: "write to read-only", export: "ro", req: protocol.Request{Type: protocol.CmdWrite, Length: 4096}, payload: big, want: protocol.EPERM},
			{name: "trim read-only", export: "ro", req: protocol.Request{Type: protocol.CmdTrim, Length: 4096}, want: protocol.EPERM},
			{name: "zero read-only", export: "ro", req: protocol.Request{Type: protocol.CmdWriteZeroes, Length: 4096}, want: protocol.EPERM},
			// A WRITE longer than the maximum but within 32 MiB gets EINVAL,
			// its payload drained (proto.md "Size constraints"); a longer one
			// is a framing violation: the server must close without reading
			// (or allocating) it.
			{name: "write over the maximum", req: protocol.Request{Type: protocol.CmdWrite, Length: 2 * badMaxRequest}, payload: make([]byte, 2*badMaxRequest), want: protocol.EINVAL},
			{name: "oversized write", req: protocol.Request{Type: protocol.CmdWrite, Length: 64 << 20}},
			{name: "bad magic", raw: badMagic()},
			{name: "truncated header", raw: []byte{0x25, 0x60, 0x95, 0x13, 0, 0}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				export := tc.export
				if export == "" {
					export = "disk"
				}
				c := dialRaw(t, s.sock, export)
				tc.req.Cookie = 0xc0ffee
				if tc.raw != nil {
					if _, err := c.conn.Write(tc.raw); err != nil {
						t.Fatal(err)
					}
					if len(tc.raw) < protocol.RequestSize {
						c.conn.(interface{ CloseWrite() error }).CloseWrite()
					}
					c.expectClosed(t, tc.name)
				} else if tc.want == protocol.EOK {
					if err := c.send(tc.req, nil); err != nil {
						t.Fatal(err)
					}
					c.expectClosed(t, tc.name)
				} else {
					got, _ := c.mustDo(t, tc.req, tc.payload)
					if got != tc.want {
						t.Errorf("%s: errno %v; want %v", tc.name, got, tc.want)
					}
					if export == "disk" {
						roundTrip(t, c, 1, "same connection after "+tc.name)
					} else {
						readBack(t, c, 0, make([]byte, 4096), "read-only export after "+tc.name)
					}
				}
				roundTrip(t, dialRaw(t, s.sock, "disk"), 2, "second connection after "+tc.name)
			})
		}
	})
}

// badMagic is a READ request whose magic is off by one bit.
func badMagic() []byte {
	var b [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdRead, Cookie: 1, Length: 512}.Put(&b)
	binary.BigEndian.PutUint32(b[:], protocol.RequestMagic^1)
	return b[:]
}

// roundTrip writes a block with a pattern unique to seed and reads it back
// on c, failing the test (with what as context) unless both succeed.
func roundTrip(t *testing.T, c *rawClient, seed byte, what string) {
	t.Helper()
	data := bytes.Repeat([]byte{seed, 0x5a, ^seed}, 1365)
	off := uint64(seed) * 8192
	if errno, _ := c.mustDo(t, protocol.Request{Type: protocol.CmdWrite, Cookie: 10 + uint64(seed), Offset: off, Length: uint32(len(data))}, data); errno != protocol.EOK {
		t.Fatalf("%s: WRITE: %v; want success", what, errno)
	}
	readBack(t, c, off, data, what)
}

// readBack reads len(want) bytes at off on c and compares them.
func readBack(t *testing.T, c *rawClient, off uint64, want []byte, what string) {
	t.Helper()
	errno, got := c.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: 20, Offset: off, Length: uint32(len(want))}, nil)
	if errno != protocol.EOK {
		t.Fatalf("%s: READ: %v; want success", what, errno)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: READ at %d: byte %d differs", what, off, i)
	}
}

// TestBadRequestsNBDSh sends the out-of-range and oversized requests
// through libnbd with its client-side checks off (testdata/bad.py), and
// then checks that a second connection is served.
func TestBadRequestsNBDSh(t *testing.T) {
	requireTool(t, "nbdsh")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		s := startNBDD(t, "--strategy", strategy, "--max-request-size", "1M", "--memory", "disk=8M")
		out := nbdsh(t, s.unixURI(t, "disk"), "bad.py", fmt.Sprintf("MAX_REQUEST=%d", badMaxRequest))
		t.Logf("bad.py:\n%s", out)
	})
}
