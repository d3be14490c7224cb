package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// TestHandshakeTimeout checks the slowloris bound: a client that
// stalls in the handshake, or sends it a byte at a time, is disconnected
// once --handshake-timeout has passed, and others are still served.
func TestHandshakeTimeout(t *testing.T) {
	s := startNBDD(t, "--memory", "disk=1M", "--handshake-timeout", "500ms")
	for _, tc := range []struct {
		name string
		drip bool // send the client flags and an option header a byte every 100 ms
	}{{"silent", false}, {"byte at a time", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("unix", s.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			closed := make(chan error, 1)
			go func() { // read the greeting, then wait for the close
				_, err := io.Copy(io.Discard, c)
				closed <- err
			}()
			if tc.drip {
				var hdr [protocol.OptionHeaderSize]byte
				protocol.OptionHeader{Opt: protocol.OptList}.Put(&hdr)
				msg := append(binary.BigEndian.AppendUint32(nil, uint32(protocol.ClientFixedNewstyle|protocol.ClientNoZeroes)), hdr[:]...)
				go func() { // the client flags and an option header, slowly
					tick := time.NewTicker(100 * time.Millisecond)
					defer tick.Stop()
					for i := range msg {
						<-tick.C
						if _, err := c.Write(msg[i : i+1]); err != nil {
							return
						}
					}
				}()
			}
			select {
			case <-closed:
				d := time.Since(start)
				if d < 400*time.Millisecond {
					t.Errorf("closed after %v; want no sooner than the 500ms timeout", d)
				}
				// The drip lasts 2 s: a deadline that moved with each byte
				// would close no sooner than 2.5 s.
				if tc.drip && d > 1800*time.Millisecond {
					t.Errorf("closed after %v; want soon after the 500ms timeout, before the drip ends", d)
				}
				t.Logf("%s: closed after %v", tc.name, time.Since(start).Round(time.Millisecond))
			case <-time.After(5 * time.Second):
				t.Fatalf("handshake still open after 5s with --handshake-timeout 500ms")
			}
			roundTrip(t, dialRaw(t, s.sock, "disk"), 1, "new client after a timed-out handshake")
		})
	}
}

// TestMaxConnections checks --max-connections: past the limit a client is
// not served, and once a connection closes a new one is.
func TestMaxConnections(t *testing.T) {
	s := startNBDD(t, "--memory", "disk=1M", "--max-connections", "2")
	// startNBDD's readiness probe holds a slot until nbdd sees it close,
	// so the first two clients may have to try again.
	a := admitted(t, s.sock, "a first connection")
	admitted(t, s.sock, "a second connection")
	if c, err := openRaw(s.sock, "disk"); err == nil {
		c.conn.Close()
		t.Fatalf("third connection completed NBD_OPT_GO with --max-connections 2")
	}
	a.conn.Close()
	roundTrip(t, admitted(t, s.sock, "a connection after one of two closed"), 2, "connection after one of two closed")
}

// admitted opens a raw client on export "disk", trying again until nbdd
// admits it or startTimeout passes.
func admitted(t *testing.T, sock, what string) *rawClient {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := openRaw(sock, "disk")
		if err == nil {
			t.Cleanup(func() { c.conn.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not admitted after %v: %v", what, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUnknownExport checks that NBD_OPT_GO for a name nbdd does not serve
// gets NBD_REP_ERR_UNKNOWN, with several exports and no default.
func TestUnknownExport(t *testing.T) {
	s := startNBDD(t, "--memory", "a=1M", "--memory", "b=1M")
	for _, name := range []string{"nope", "", strings.Repeat("x", 4096)} {
		if _, err := openRaw(s.sock, name); err == nil || !strings.Contains(err.Error(), "NBD_REP_ERR_UNKNOWN") {
			t.Errorf("NBD_OPT_GO %.20q: %v; want NBD_REP_ERR_UNKNOWN", name, err)
		}
	}
	roundTrip(t, dialRaw(t, s.sock, "b"), 3, "export b after unknown names")
}

// TestReadOnlyFlag checks --read-only: every export is read-only, says so,
// and refuses writes with EPERM while reads work.
func TestReadOnlyFlag(t *testing.T) {
	file := sparseFile(t, t.TempDir(), 1<<20)
	s := startNBDD(t, "--read-only", "--memory", "a=1M", "--export", "f="+file)
	// The file is opened read-only, not only served so: a file the
	// server may not write can be exported with --read-only.
	if mode := openMode(t, s.cmd.Process.Pid, file); mode != os.O_RDONLY {
		t.Errorf("--read-only: %s opened with access mode %d; want O_RDONLY", file, mode)
	}
	for _, name := range []string{"a", "f"} {
		c := dialRaw(t, s.sock, name)
		if c.flags&protocol.FlagReadOnly == 0 {
			t.Errorf("export %s flags %v; want NBD_FLAG_READ_ONLY", name, c.flags)
		}
		if errno, _ := c.mustDo(t, protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Length: 512}, make([]byte, 512)); errno != protocol.EPERM {
			t.Errorf("WRITE to %s under --read-only: %v; want NBD_EPERM", name, errno)
		}
		readBack(t, c, 0, make([]byte, 512), "read-only export "+name)
	}
}

// openMode returns the access mode (O_RDONLY, O_WRONLY or O_RDWR) with
// which process pid holds path open, from /proc/PID/fdinfo.
func openMode(t *testing.T, pid int, path string) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || target != path {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				return int(flags) & syscall.O_ACCMODE
			}
		}
	}
	t.Fatalf("process %d does not hold %s open", pid, path)
	return -1
}

// TestSIGHUPShutsDownCleanly: a hangup (the terminal of a foreground nbdd
// closed) shuts down like SIGTERM, so a load export's unflushed writes
// reach its file and the socket is removed.
func TestSIGHUPShutsDownCleanly(t *testing.T) {
	img := sparseFile(t, t.TempDir(), 1<<20)
	s := startNBDD(t, "--export", "a="+img+",load")
	c := dialRaw(t, s.sock, "a")
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	if errno, _ := c.mustDo(t, protocol.Request{Type: protocol.CmdWrite, Cookie: 1, Offset: 8192, Length: 4096}, data); errno != protocol.EOK {
		t.Fatalf("WRITE: %v", errno)
	}
	c.conn.Close()  // no FLUSH, no DISC
	s.exited = true // checked here
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !s.exitedWithin(stopTimeout) {
		t.Fatalf("nbdd still running %v after SIGHUP", stopTimeout)
	}
	if err := s.wait(); err != nil {
		t.Fatalf("nbdd after SIGHUP: %v; want exit status 0\nstderr:\n%s", err, s.stderr)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[8192:8192+4096], data) {
		t.Errorf("the write before SIGHUP did not reach %s", img)
	}
	if _, err := os.Stat(s.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s left behind after SIGHUP: %v", s.sock, err)
	}
}
