package s3store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/internal/s3test"
)

// faultProxy stands between the Store and versitygw and answers the
// ranged GETs with the faults queued, one each, before it lets them
// through: "503" and "409" (S3 error responses), "reset" (the connection
// closed with a TCP reset, no response) and "200" (the whole object,
// the Range ignored).
type faultProxy struct {
	mu     sync.Mutex
	faults []string
	seen   []string // the faults answered, in order
	wholes int      // GETs without a Range
}

func (f *faultProxy) next() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.faults) == 0 {
		return ""
	}
	fault := f.faults[0]
	f.faults = f.faults[1:]
	f.seen = append(f.seen, fault)
	return fault
}

// wholeFault answers a GET without a Range with the fault queued, if
// any: "503", "short" (the object's Content-Length, half its body, then
// the connection closed) and "206" (a partial answer to a GET of all).
func (f *faultProxy) wholeFault(w http.ResponseWriter, r *http.Request, pass http.Handler) {
	f.mu.Lock()
	f.wholes++
	f.mu.Unlock()
	switch f.next() {
	case "503":
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
	case "short":
		rec := httptest.NewRecorder()
		pass.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2])
		http.NewResponseController(w).Flush() // sent, so net/http does not resend the GET
		panic(http.ErrAbortHandler)
	case "206":
		r.Header.Set("Range", "bytes=0-")
		pass.ServeHTTP(w, r)
	default:
		pass.ServeHTTP(w, r)
	}
}

func (f *faultProxy) queue(faults ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults, f.seen = faults, nil
}

// newFaultStore starts versitygw and a faultProxy in front of it, and
// returns a Store whose endpoint is the proxy.
func newFaultStore(t *testing.T) (*Store, *faultProxy) {
	t.Helper()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	f := &faultProxy{}
	pass := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			pass.ServeHTTP(w, r)
			return
		}
		if r.Header.Get("Range") == "" {
			f.wholeFault(w, r, pass)
			return
		}
		switch f.next() {
		case "503":
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
		case "409":
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `<Error><Code>OperationAborted</Code><Message>A conflicting conditional operation is in progress.</Message></Error>`)
		case "reset":
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		case "200":
			r.Header.Del("Range")
			pass.ServeHTTP(w, r)
		default:
			pass.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(proxy.Close)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_ENDPOINT_URL", proxy.URL)
	st, err := New(context.Background(), Config{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	return st, f
}

// TestGetFaults checks what each fault of a ranged GET becomes: a
// transient error (the engine retries it) for 5xx and 409; a reset too,
// unless net/http resent the GET on a new connection itself (it does so
// for a request that got no byte of a response on a reused connection);
// a permanent one for a server that ignores the range (where the body
// does not start at the offset asked for); and data once it passes.
func TestGetFaults(t *testing.T) {
	st, f := newFaultStore(t)
	ctx := context.Background()
	if err := st.PutIfAbsent(ctx, "k", bytes.NewReader([]byte("0123456789")), 10); err != nil {
		t.Fatal(err)
	}
	for _, fault := range []string{"503", "409", "reset", "200"} {
		ignored := fault == "200"
		f.queue(fault)
		p := make([]byte, 4)
		n, err := st.ReadAt(ctx, "k", p, 3)
		if fault == "reset" && err == nil && n == 4 && string(p) == "3456" {
			continue
		}
		var perm *logdisk.Permanent
		if err == nil || errors.As(err, &perm) != ignored || errors.Is(err, logdisk.ErrNotFound) || errors.Is(err, io.EOF) {
			t.Errorf("GET answered %s: %v; want a transient error, permanent if the range was ignored", fault, err)
		}
		if n, err := st.ReadAt(ctx, "k", p, 3); n != 4 || err != nil || string(p) != "3456" {
			t.Errorf("GET after %s: %d %v %q; want 3456", fault, n, err, p)
		}
	}
	f.queue("200")
	p := make([]byte, 4)
	if n, err := st.ReadAt(ctx, "k", p, 0); n != 4 || err != nil || string(p) != "0123" {
		t.Errorf("the whole object for a GET from 0: %d %v %q; want 0123", n, err, p)
	}
}

// TestGetWhole checks the GET of a whole object: no Range, its body in
// the buffers given; an object of another length than theirs is a
// permanent error, a body cut short or a 5xx a transient one, a 206 to a
// GET of all a permanent one.
func TestGetWhole(t *testing.T) {
	st, f := newFaultStore(t)
	ctx := context.Background()
	if err := st.PutIfAbsent(ctx, "k", bytes.NewReader([]byte("0123456789")), 10); err != nil {
		t.Fatal(err)
	}
	a, b := make([]byte, 4), make([]byte, 6)
	if n, err := st.ReadWholev(ctx, "k", [][]byte{a, b}); n != 10 || err != nil || string(a)+string(b) != "0123456789" {
		t.Fatalf("ReadWholev: %d %v %q %q", n, err, a, b)
	}
	if f.wholes != 1 {
		t.Fatalf("%d GETs without a Range, want 1", f.wholes)
	}
	var perm *logdisk.Permanent
	if _, err := st.ReadWholev(ctx, "k", [][]byte{make([]byte, 8)}); !errors.As(err, &perm) {
		t.Errorf("ReadWholev of 10 bytes into 8: %v; want a permanent error", err)
	}
	if _, err := st.ReadWholev(ctx, "missing", [][]byte{a}); !errors.Is(err, logdisk.ErrNotFound) {
		t.Errorf("ReadWholev of a missing key: %v; want ErrNotFound", err)
	}
	for _, fault := range []string{"503", "short", "206"} {
		f.queue(fault)
		clear(a)
		clear(b)
		_, err := st.ReadWholev(ctx, "k", [][]byte{a, b})
		if err == nil || errors.As(err, &perm) != (fault == "206") || errors.Is(err, logdisk.ErrNotFound) {
			t.Errorf("a whole GET answered %s: %v; want a transient error, permanent for a 206", fault, err)
		}
	}
}

// TestDiskReadRetries reads an image back through GETs that fail with
// 503, 409 and resets: the engine retries each with backoff and reads the
// data written.
func TestDiskReadRetries(t *testing.T) {
	st, f := newFaultStore(t)
	ctx := context.Background()
	cfg := logdisk.Config{Store: st, Prefix: "img/", JournalDir: t.TempDir(), NoGC: true}
	if err := logdisk.Create(ctx, cfg, 4<<20); err != nil {
		t.Fatal(err)
	}
	w, err := logdisk.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("retried "), 512<<10/8)
	if _, err := w.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.ReadOnly = true
	cfg.JournalDir = t.TempDir()
	r, err := logdisk.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	faults := []string{"503", "409", "reset", "503", "reset", "409"}
	f.queue(faults...)
	got := make([]byte, len(data))
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatalf("ReadAt through faults: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("ReadAt through faults: other bytes than written")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) != len(faults) {
		t.Fatalf("faults answered: %v; want all of %v", f.seen, faults)
	}
}

// TestGetResignsExpired checks that a kept URL the server refuses (403:
// signed with credentials that have expired since) is signed again.
func TestGetResignsExpired(t *testing.T) {
	st, _, bucket := newStore(t)
	ctx := context.Background()
	if err := st.PutIfAbsent(ctx, "k", bytes.NewReader([]byte("0123456789")), 10); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "expired")
	old, err := New(ctx, Config{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	stale, _, err := old.presign.get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	st.presign.urls["k"] = stale
	p := make([]byte, 4)
	if n, err := st.ReadAt(ctx, "k", p, 3); n != 4 || err != nil || string(p) != "3456" {
		t.Fatalf("ReadAt with a stale URL kept: %d %v %q; want 3456", n, err, p)
	}
}

// TestGetReusesConnections checks that ranged GETs, read as the cache
// reads them (to their last byte, never past it), give their connections
// back: 8 readers making 200 GETs open at most 8 connections.
func TestGetReusesConnections(t *testing.T) {
	st, _, _ := newStore(t)
	ctx := context.Background()
	obj := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	if err := st.PutIfAbsent(ctx, "seg", bytes.NewReader(obj), int64(len(obj))); err != nil {
		t.Fatal(err)
	}
	var opened atomic.Int64
	trace := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if !info.Reused {
				opened.Add(1)
			}
		},
	})
	var wg sync.WaitGroup
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := [][]byte{make([]byte, 16<<10), make([]byte, 16<<10)}
			for i := range 25 {
				off := int64((r*25+i)%32) * (32 << 10)
				if n, err := st.ReadAtv(trace, "seg", bufs, off); n != 32<<10 || err != nil {
					t.Errorf("ReadAtv at %d: %d, %v", off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := opened.Load(); n > 8 {
		t.Fatalf("200 GETs on 8 readers opened %d connections; want at most 8", n)
	}
}

// TestGetSharesSDKConnections checks that presigned GETs and the SDK's
// requests draw on one pool of connections: a GET after a PUT, and a
// LIST after that GET, each reuse the connection the one before left
// idle, so an image's first read after its open does not dial.
func TestGetSharesSDKConnections(t *testing.T) {
	st, _, _ := newStore(t)
	ctx := context.Background()
	var reused []bool
	trace := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) },
	})
	obj := []byte("0123456789abcdef")
	if err := st.PutIfAbsent(trace, "seg", bytes.NewReader(obj), int64(len(obj))); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8)
	if n, err := st.ReadAt(trace, "seg", p, 4); n != len(p) || err != nil {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	if err := st.List(trace, "se", "", func(logdisk.ObjectInfo) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if len(reused) != 3 || reused[1] != true || reused[2] != true {
		t.Fatalf("connections reused by PUT, GET, LIST: %v; want [_ true true]", reused)
	}
}

// TestPresignedBounded checks that the URLs kept stay within
// maxPresigned, and that a full set loses a quarter, not all.
func TestPresignedBounded(t *testing.T) {
	st, _, _ := newStore(t)
	ctx := context.Background()
	for i := range maxPresigned + 10 {
		if _, _, err := st.presign.get(ctx, "seg/"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		if n := len(st.presign.urls); n > maxPresigned {
			t.Fatalf("%d URLs kept; want at most %d", n, maxPresigned)
		}
	}
	if n := len(st.presign.urls); n < maxPresigned/2 {
		t.Fatalf("%d URLs kept after %d objects; want more than half of %d", n, maxPresigned+10, maxPresigned)
	}
}
