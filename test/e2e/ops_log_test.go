package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// TestLogBackendErrorJSON: with --log-format json every line is one JSON
// object with no key twice; --fault is announced at start (log and
// help); a backend error reaches the log at warn with the export,
// command, range and errno; a refused option says why under "reason";
// and a connection's end is one line summing up what it did.
func TestLogBackendErrorJSON(t *testing.T) {
	s := startNBDD(t, "--log-format", "json", "--memory", "disk=1M", "--fault", "read:0-4K:eio")
	if _, err := openRaw(s.sock, "nope"); err == nil || !strings.Contains(err.Error(), "NBD_REP_ERR_UNKNOWN") {
		t.Errorf("GO for an unknown export: %v; want NBD_REP_ERR_UNKNOWN", err)
	}
	c := dialRaw(t, s.sock, "disk")
	if errno, _ := c.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: 1, Offset: 512, Length: 512}, nil); errno != protocol.EIO {
		t.Fatalf("READ of a faulty range: %v; want NBD_EIO", errno)
	}
	readBack(t, c, 8192, make([]byte, 4096), "READ past the faulty range")
	if err := c.send(protocol.Request{Type: protocol.CmdDisc}, nil); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, c.conn)
	if !s.stderr.waitFor(`"client disconnected"`, 5*time.Second) {
		t.Fatalf("no summary line:\n%s", s.stderr)
	}
	lines := jsonLines(t, s.stderr.String())
	wantLine(t, lines, "fault injection", map[string]any{"level": "WARN", "fault": "read:0-4K:eio"})
	wantLine(t, lines, "request failed", map[string]any{"level": "WARN", "export": "disk", "cmd": "NBD_CMD_READ", "offset": 512.0, "len": 512.0, "errno": "NBD_EIO"})
	wantLine(t, lines, "option refused", map[string]any{"reason": `unknown export "nope"`})
	wantLine(t, lines, "client disconnected", map[string]any{"export": "disk", "requests": 2.0, "errors": 1.0, "read_bytes": 4096.0, "written_bytes": 0.0})
}

// jsonLines decodes each line of log as a JSON object, failing the test
// on a line that is not one or that repeats a key.
func jsonLines(t *testing.T, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if dup := duplicateKey(line); dup != "" {
			t.Errorf("log line repeats key %q: %s", dup, line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not a JSON object (%v): %s", err, line)
		}
		out = append(out, m)
	}
	return out
}

// duplicateKey returns a top-level key that occurs twice in the JSON
// object line, or "".
func duplicateKey(line string) string {
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		key := fmt.Sprint(tok)
		if seen[key] {
			return key
		}
		seen[key] = true
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return ""
		}
	}
	return ""
}

// wantLine fails the test unless a line whose msg contains msg has every
// key of want with its value.
func wantLine(t *testing.T, lines []map[string]any, msg string, want map[string]any) {
	t.Helper()
	for _, l := range lines {
		m, _ := l["msg"].(string)
		if !strings.Contains(strings.ToLower(m), strings.ToLower(msg)) {
			continue
		}
		ok := true
		for k, v := range want {
			if l[k] != v {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	t.Errorf("no log line %q with %v among:\n%v", msg, want, lines)
}
