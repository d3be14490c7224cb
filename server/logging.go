package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// Failed requests are logged at warn (nbdkit prints every error), but a
// failing disk would otherwise write a line per request: each connection
// and each export has a budget of lines, a token bucket that holds
// errLogBurst lines and refills errLogRate a second. What a budget
// suppresses is counted in the next line that goes out ("suppressed") and
// in the connection's summary ("errors").
const (
	errLogBurst = 10
	errLogRate  = 1.0
)

// logBudget is a token bucket of log lines.
type logBudget struct {
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int64
}

// take spends a line if there is one. It reports whether the line may go
// out and, if so, how many lines were suppressed since the last that did.
func (b *logBudget) take(now time.Time) (ok bool, suppressed int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last.IsZero() {
		b.tokens = errLogBurst
	} else {
		b.tokens = min(errLogBurst, b.tokens+now.Sub(b.last).Seconds()*errLogRate)
	}
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// exportLogBudget is the budget of lines the export named name has,
// shared by its connections.
func (s *Server) exportLogBudget(name string) *logBudget {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errLogs == nil {
		s.errLogs = make(map[string]*logBudget)
	}
	b := s.errLogs[name]
	if b == nil {
		b = new(logBudget)
		s.errLogs[name] = b
	}
	return b
}

// logIfFailed logs a finished request if it failed. What the connection did
// is counted once, by the reader and the reply writer, in c.counts
// (stats.go), which the summary reads.
func (c *conn) logIfFailed(o *op) {
	if o.err != nil {
		c.requestFailed(o.req, o.err.errno, o.err.err)
	}
}

// requestFailed logs a request that got an error reply, at warn within
// the connection's and the export's budgets (at debug for the errors
// that are part of normal operation: see expectedFailure).
func (c *conn) requestFailed(req protocol.ExtendedRequest, errno protocol.Errno, err error) {
	level := slog.LevelWarn
	if expectedFailure(req, errno) {
		level = slog.LevelDebug
	}
	if !c.log.Enabled(context.Background(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("export", c.exp.Name), slog.String("cmd", req.Type.String()),
		slog.Uint64("offset", req.Offset), slog.Uint64("len", uint64(req.Length)),
		slog.String("errno", errno.String()), slog.Any("err", err),
	}
	if level == slog.LevelWarn {
		now := time.Now()
		ok, connSuppressed := c.errLog.take(now)
		if !ok {
			return
		}
		ok, expSuppressed := c.srv.exportLogBudget(c.exp.Name).take(now)
		if !ok {
			return
		}
		if n := connSuppressed + expSuppressed; n > 0 {
			attrs = append(attrs, slog.Int64("suppressed", n))
		}
	}
	c.log.LogAttrs(context.Background(), level, "request failed", attrs...)
}

// expectedFailure reports errors that say nothing is wrong: refusals
// during a shutdown, and a FAST_ZERO the export cannot do fast, which
// clients (qemu-img) ask for to find out (proto.md "NBD_CMD_FLAG_FAST_ZERO").
func expectedFailure(req protocol.ExtendedRequest, errno protocol.Errno) bool {
	return errno == protocol.ESHUTDOWN ||
		(errno == protocol.ENOTSUP && req.Type == protocol.CmdWriteZeroes && req.Flags&protocol.CmdFlagFastZero != 0)
}

// summary are the attributes of the line that ends a connection: the
// export, how long it lasted and what it did, read from the counters
// Server.Stats reads (stats.go). Errors are the error replies and the
// READs cut off by a disconnect.
func (c *conn) summary() []any {
	attrs := make([]any, 0, 14)
	if c.exp != nil {
		attrs = append(attrs, "export", c.exp.Name)
	}
	var es ExportStats
	if cs := c.stats.Load(); cs != nil {
		es = cs.snapshot()
	}
	var requests, errors int64
	for _, n := range es.Requests {
		requests += n
	}
	for _, n := range es.Errors {
		errors += n
	}
	return append(attrs,
		"duration", time.Since(c.started).Round(time.Millisecond),
		"requests", requests+es.UnknownCmds,
		"read_bytes", es.ReadBytes,
		"written_bytes", es.WriteBytes,
		"errors", errors+es.Aborted)
}
