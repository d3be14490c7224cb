package s3store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/internal/s3test"
)

// newStore starts versitygw, makes a bucket and returns a Store on it,
// configured only through the AWS environment, as nbdd is.
func newStore(t testing.TB) (*Store, *s3test.Server, string) {
	t.Helper()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st, err := New(context.Background(), Config{Bucket: bucket})
	if err != nil {
		t.Fatal(err)
	}
	return st, srv, bucket
}

func TestStoreSemantics(t *testing.T) {
	st, _, _ := newStore(t)
	ctx := context.Background()
	body := []byte("0123456789")
	if err := st.PutIfAbsent(ctx, "a/x", bytes.NewReader(body), 10); err != nil {
		t.Fatalf("first put: %v", err)
	}
	if err := st.PutIfAbsent(ctx, "a/x", bytes.NewReader([]byte("other")), 5); !errors.Is(err, logdisk.ErrExists) {
		t.Fatalf("second put: got %v; want ErrExists", err)
	}
	p := make([]byte, 4)
	if n, err := st.ReadAt(ctx, "a/x", p, 3); n != 4 || err != nil || string(p) != "3456" {
		t.Fatalf("ReadAt 3+4: %d %v %q", n, err, p)
	}
	p = make([]byte, 8)
	if n, err := st.ReadAt(ctx, "a/x", p, 6); n != 4 || !errors.Is(err, io.EOF) || string(p[:n]) != "6789" {
		t.Fatalf("ReadAt past the end: %d %v %q; want 4 io.EOF", n, err, p[:n])
	}
	if _, err := st.ReadAt(ctx, "a/x", p, 20); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt after the end: %v; want io.EOF", err)
	}
	if _, err := st.ReadAt(ctx, "a/missing", p, 0); !errors.Is(err, logdisk.ErrNotFound) {
		t.Fatalf("ReadAt of a missing key: %v; want ErrNotFound", err)
	}
	for _, k := range []string{"a/y", "a/z", "b/w"} {
		if err := st.PutIfAbsent(ctx, k, bytes.NewReader(nil), 0); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if err := st.List(ctx, "a/", "a/x", func(o logdisk.ObjectInfo) bool { keys = append(keys, o.Key); return true }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, ",") != "a/y,a/z" {
		t.Fatalf("List a/ after a/x: %v; want [a/y a/z]", keys)
	}
	if err := st.Delete(ctx, []string{"a/x", "a/y", "a/never"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReadAt(ctx, "a/x", p, 0); !errors.Is(err, logdisk.ErrNotFound) {
		t.Fatalf("ReadAt after Delete: %v; want ErrNotFound", err)
	}
	if err := logdisk.Probe(ctx, st, "probe-test/"); err != nil {
		t.Fatalf("the put-if-absent probe fails on versitygw: %v", err)
	}
}

func TestStoreClearErrors(t *testing.T) {
	st, srv, _ := newStore(t)
	ctx := context.Background()
	missing, err := New(ctx, Config{Bucket: "no-such-bucket"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = missing.ReadAt(ctx, "k", make([]byte, 1), 0)
	var perm *logdisk.Permanent
	if !errors.As(err, &perm) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing bucket: %v; want a permanent 'does not exist'", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	bad, err := New(ctx, Config{Bucket: st.cfg.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.ReadAt(ctx, "k", make([]byte, 1), 0)
	if !errors.As(err, &perm) || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("bad secret: %v; want a permanent credentials error", err)
	}
	srv.Stop()
	_, err = st.ReadAt(ctx, "k", make([]byte, 1), 0)
	if err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Fatalf("server down: %v; want 'cannot reach'", err)
	}
}

// TestDiskOnS3 runs the engine on the real server: write, flush, reopen,
// takeover.
func TestDiskOnS3(t *testing.T) {
	st, _, _ := newStore(t)
	ctx := context.Background()
	cfg := logdisk.Config{Store: st, Prefix: "img/", JournalDir: t.TempDir(), NoGC: true}
	if err := logdisk.Create(ctx, cfg, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := logdisk.Create(ctx, cfg, 64<<20); !errors.Is(err, logdisk.ErrImageExists) {
		t.Fatalf("second Create: %v; want ErrImageExists", err)
	}
	d, err := logdisk.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("nbdd on s3 "), 300000)
	if _, err := d.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.JournalDir = t.TempDir()
	if _, err := logdisk.Open(ctx, other); !errors.Is(err, logdisk.ErrInUse) {
		t.Fatalf("second writer: %v; want ErrInUse", err)
	}
	other.Takeover = true
	d2, err := logdisk.Open(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := d.WriteAt([]byte("late"), 0); err == nil {
		if err := d.Sync(); !errors.Is(err, logdisk.ErrFenced) {
			t.Fatalf("fenced writer's FLUSH: %v; want ErrFenced", err)
		}
	}
	d.Close()
	got := make([]byte, len(data)+4096)
	if _, err := d2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[4096:], data) || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatal("the taker reads something else than the first writer flushed")
	}
}
