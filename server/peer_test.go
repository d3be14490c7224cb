package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/nbdd/nbdd/backend"
	"github.com/stretchr/testify/require"
)

// TestUnixPeersNotPerHost: unix-socket clients are not counted per host
// (every one of them would be the same "host"), so MaxConnsPerHost does
// not refuse the second; and the log names them by pid and uid, from
// SO_PEERCRED, rather than by their empty address.
func TestUnixPeersNotPerHost(t *testing.T) {
	checkLeaks(t)
	logs := &logRecorder{}
	srv := &Server{MaxConnsPerHost: 1, Logger: slog.New(logs),
		Exports: []Export{{Name: "mem", Backend: backend.NewMemory(1 << 20)}}}
	sock, _ := serveUnix(t, srv)
	var clients []*client
	for range 3 {
		c := dialClient(t, sock)
		c.handshake("mem")
		clients = append(clients, c)
	}
	for _, c := range clients {
		c.disc()
		c.wantClosed()
	}
	require.NoError(t, srv.Shutdown(context.Background()))
	connected := logs.find("client connected")
	require.Len(t, connected, 3)
	for _, r := range connected {
		require.EqualValues(t, os.Getpid(), r["pid"], "pid of a unix peer: %v", r)
		require.EqualValues(t, os.Getuid(), r["uid"], "uid of a unix peer: %v", r)
		require.NotContains(t, r, "remote")
	}
}

// logRecorder is a slog.Handler that keeps each record's attributes,
// those added by Logger.With included, as JSON would carry them, and
// fails on a key that occurs twice in one record (which JSON log readers
// take as the last value only).
type logRecorder struct {
	mu      sync.Mutex
	records []map[string]any
	dups    []string
	attrs   []slog.Attr // of a handler made by WithAttrs
	root    *logRecorder
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	root := h.rootOf()
	m := map[string]any{"msg": r.Message, "level": r.Level.String()}
	var dups []string
	add := func(a slog.Attr) bool {
		if _, ok := m[a.Key]; ok {
			dups = append(dups, r.Message+": "+a.Key)
		}
		var v any
		if err, ok := a.Value.Any().(error); ok {
			v = err.Error() // as slog's JSON handler writes errors
		} else {
			b, _ := json.Marshal(a.Value.Any())
			if json.Unmarshal(b, &v) != nil || v == nil {
				v = a.Value.String()
			}
		}
		m[a.Key] = v
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	root.mu.Lock()
	defer root.mu.Unlock()
	root.records = append(root.records, m)
	root.dups = append(root.dups, dups...)
	return nil
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &logRecorder{root: h.rootOf(), attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *logRecorder) WithGroup(string) slog.Handler { return h }

func (h *logRecorder) rootOf() *logRecorder {
	if h.root != nil {
		return h.root
	}
	return h
}

// find returns the records whose message starts with msg.
func (h *logRecorder) find(msg string) []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, r := range h.records {
		if strings.HasPrefix(r["msg"].(string), msg) {
			out = append(out, r)
		}
	}
	return out
}

// duplicates returns "message: key" for each key seen twice in a record.
func (h *logRecorder) duplicates() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.dups...)
}
