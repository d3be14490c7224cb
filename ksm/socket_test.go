package ksm

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// stubController records events and reports a fixed status.
type stubController struct {
	events chan Event
}

func (s *stubController) Send(ev Event) { s.events <- ev }
func (s *stubController) Status() Status {
	return Status{Running: true, State: Standard, Knobs: map[string]string{KnobRun: "1"}, Counters: Counters{PagesSharing: 42}}
}

func serveStub(t *testing.T) (path string, stub *stubController) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "ksm.sock")
	l, err := ListenSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	stub = &stubController{events: make(chan Event, 8)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, stub) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(path); err == nil {
			t.Error("socket left behind")
		}
	})
	return path, stub
}

func TestSocketProtocol(t *testing.T) {
	path, stub := serveStub(t)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, %v; want 0660", fi.Mode(), err)
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	ask := func(line string) string {
		t.Helper()
		if _, err := conn.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		reply, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(reply, "\n")
	}
	if got := ask("kick vm 42 started"); got != "ok" {
		t.Errorf("kick: %q", got)
	}
	if ev := <-stub.events; ev != (Event{Kind: EventKick, Name: "vm 42 started"}) {
		t.Errorf("event %+v", ev)
	}
	if got := ask("kick"); got != "ok" {
		t.Errorf("kick: %q", got)
	}
	<-stub.events
	var s Status
	if err := json.Unmarshal([]byte(ask("status")), &s); err != nil || s.State != Standard || s.Counters.PagesSharing != 42 {
		t.Errorf("status: %+v, %v", s, err)
	}
	for _, bad := range []string{"reboot", "", "status now"} {
		if got := ask(bad); !strings.HasPrefix(got, "error: ") {
			t.Errorf("%q: %q; want an error", bad, got)
		}
	}
}

func TestSocketClient(t *testing.T) {
	path, stub := serveStub(t)
	ctx := context.Background()
	if got, err := Call(ctx, path, "kick cli"); err != nil || got != "ok" {
		t.Errorf("Call kick = %q, %v", got, err)
	}
	<-stub.events
	if s, err := QueryStatus(ctx, path); err != nil || s.State != Standard || s.Knobs[KnobRun] != "1" {
		t.Errorf("QueryStatus = %+v, %v", s, err)
	}
	if _, err := Call(ctx, path, "nope"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("Call nope: %v", err)
	}
}

func TestListenSocketStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // a crashed server leaves its socket file
	l2, err := ListenSocket(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	if _, err := ListenSocket(stale); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("live socket: %v; want in use", err)
	}
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o644)
	if _, err := ListenSocket(regular); err == nil {
		t.Error("regular file replaced")
	}
}

// TestTemporaryAcceptError: running out of descriptors or memory does not
// end the control socket; other accept errors do.
func TestTemporaryAcceptError(t *testing.T) {
	for err, want := range map[error]bool{
		&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}: true,
		syscall.ENFILE:       true,
		syscall.ECONNABORTED: true,
		syscall.EINVAL:       false,
		net.ErrClosed:        false,
	} {
		if got := temporaryAcceptError(err); got != want {
			t.Errorf("temporaryAcceptError(%v) = %v; want %v", err, got, want)
		}
	}
}
