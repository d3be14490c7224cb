package logdisk

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hookStore gives one Disk its own view of a shared store, so a test can
// hold that writer's requests without holding the other's.
type hookStore struct {
	Store
	hook func(op Op, key string)
}

func (s *hookStore) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if s.hook != nil {
		s.hook(OpPut, key)
	}
	return s.Store.PutIfAbsent(ctx, key, body, size)
}

// heldPuts holds a writer's PUTs of chosen keys until released.
type heldPuts struct{ ch map[string]chan struct{} }

func (h *heldPuts) hook(op Op, key string) {
	if c, ok := h.ch[key]; ok {
		<-c
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestSecondWriterRefusedWithoutTakeover(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	a := openDisk(t, testConfig(t, st))
	mustWrite(t, a, fill(4096, 1), 0)
	mustSync(t, a)
	_, err := Open(context.Background(), testConfig(t, st))
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second writer: got %v; want ErrInUse", err)
	}
	// The refusal wrote nothing: the first writer goes on.
	mustWrite(t, a, fill(4096, 2), 4096)
	mustSync(t, a)
}

func TestTakeoverFencesFirstWriter(t *testing.T) {
	st := NewMemStore()
	createImage(t, st, 1<<20)
	a := openDisk(t, testConfig(t, st))
	x1 := fill(4096, 1)
	mustWrite(t, a, x1, 0)
	mustSync(t, a)
	cfg := testConfig(t, st)
	cfg.Takeover = true
	b := openDisk(t, cfg)
	mustWrite(t, a, fill(4096, 2), 4096)
	if err := a.Sync(); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced writer's FLUSH: got %v; want ErrFenced", err)
	}
	if _, err := a.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced writer's READ: got %v; want ErrFenced", err)
	}
	if _, err := a.WriteAt([]byte{1}, 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("fenced writer's WRITE: got %v; want ErrFenced", err)
	}
	want := make([]byte, 1<<20)
	copy(want, x1)
	requireViews(t, st, b, want)
}

// TestFencedInFlightNeverVisible: the old writer has two segments in
// flight; the later one lands before the taker lists, the earlier one is
// held until the taker has claimed. Neither may ever be visible.
func TestFencedInFlightNeverVisible(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 1<<20)
	held := &heldPuts{ch: map[string]chan struct{}{}}
	ast := &hookStore{Store: mem, hook: held.hook}
	acfg := testConfig(t, ast)
	a := openDisk(t, acfg)
	x1 := fill(4096, 1)
	mustWrite(t, a, x1, 0)
	mustSync(t, a)

	s := a.nextSeq
	held.ch[a.key(logDir, s)] = make(chan struct{})
	mustWrite(t, a, fill(64<<10, 2), 64<<10)  // fills segment s: sealed, upload held
	mustWrite(t, a, fill(64<<10, 3), 128<<10) // segment s+1 lands
	waitFor(t, "segment s+1 to land", func() bool { _, ok := mem.Object(a.key(logDir, s+1)); return ok })
	flushed := make(chan error)
	go func() { flushed <- a.Sync() }()

	cfg := testConfig(t, mem)
	cfg.Takeover = true
	b := openDisk(t, cfg)
	if first := b.nextSeq - b.meta.Window; first != s {
		t.Fatalf("taker's first claim at %d; want %d (the gap)", first, s)
	}
	close(held.ch[a.key(logDir, s)])
	if err := <-flushed; !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer's FLUSH: got %v; want ErrFenced", err)
	}
	want := make([]byte, 1<<20)
	copy(want, x1)
	requireViews(t, mem, b, want)
}

// requireViews checks that a fresh reader of st and the taker b both
// read want.
func requireViews(t *testing.T, st Store, b *Disk, want []byte) {
	t.Helper()
	requireEqual(t, readAll(t, st), want, "a fresh reader")
	requireReads(t, b, want, "the taker's view")
}

// TestInFlightLandedBeforeClaimCounts: the old writer's segment lands
// after the taker listed but before its claim; the taker reads it and it
// counts, for everyone.
func TestInFlightLandedBeforeClaimCounts(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 1<<20)
	held := &heldPuts{ch: map[string]chan struct{}{}}
	a := openDisk(t, testConfig(t, &hookStore{Store: mem, hook: held.hook}))
	s := a.nextSeq
	held.ch[a.key(logDir, s)] = make(chan struct{})
	x2 := fill(64<<10, 2)
	mustWrite(t, a, x2, 0) // segment s, held

	released := false
	bst := &hookStore{Store: mem, hook: func(op Op, key string) {
		if op == OpPut && key == a.key(logDir, s) && !released {
			released = true
			close(held.ch[key])
			waitFor(t, "the old writer's segment", func() bool { _, ok := mem.Object(key); return ok })
		}
	}}
	cfg := testConfig(t, bst)
	cfg.Takeover = true
	b := openDisk(t, cfg)
	if !released {
		t.Fatal("the taker never tried the old writer's sequence number")
	}
	want := make([]byte, 1<<20)
	copy(want, x2)
	requireViews(t, mem, b, want)
	// The old writer's next upload collides.
	mustWrite(t, a, fill(4096, 3), 0)
	if err := a.Sync(); !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer's FLUSH: got %v; want ErrFenced", err)
	}
}

// TestWindowBoundsOldWriter: the old writer has a full window of
// segments in flight, all held; the taker decides every one of them.
func TestWindowBoundsOldWriter(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 4<<20)
	held := &heldPuts{ch: map[string]chan struct{}{}}
	acfg := testConfig(t, &hookStore{Store: mem, hook: held.hook})
	acfg.Uploads = 32
	a := openDisk(t, acfg)
	s := a.nextSeq
	w := a.meta.Window
	for i := uint64(0); i < w+4; i++ {
		held.ch[a.key(logDir, s+i)] = make(chan struct{})
	}
	go func() {
		for i := range w + 4 {
			a.WriteAt(fill(64<<10, uint64(i)), int64(i)*(64<<10))
		}
		a.Sync()
	}()
	waitFor(t, "the window to fill", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.inFlight == int(w)
	})
	cfg := testConfig(t, mem)
	cfg.Takeover = true
	b := openDisk(t, cfg)
	if b.nextSeq != s+w {
		t.Fatalf("taker starts writing at %d; want %d (first claim %d plus the window %d)", b.nextSeq, s+w, s, w)
	}
	for _, c := range held.ch {
		close(c)
	}
	waitFor(t, "the old writer to be fenced", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return errors.Is(a.failed, ErrFenced)
	})
	requireEqual(t, readAll(t, mem), make([]byte, 4<<20), "a reader")
	for i := uint64(0); i < w+4; i++ {
		if b, ok := mem.Object(a.key(logDir, s+i)); ok {
			if h, err := decodeLogHeader(b, 4<<20); err == nil && h.Kind == objSegment {
				t.Fatalf("old writer's segment %d landed", s+i)
			}
		}
	}
}

// TestConcurrentOpenersOneWins: two writers open a free image at once;
// the second's claim runs after the first has opened.
func TestConcurrentOpenersOneWins(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 1<<20)
	aOpened := make(chan struct{})
	var listed atomic.Bool
	bst := &hookStore{Store: mem, hook: func(op Op, key string) {
		if op == OpPut && !isProbe(key) && listed.CompareAndSwap(false, true) {
			<-aOpened
		}
	}}
	type result struct {
		d   *Disk
		err error
	}
	bres := make(chan result)
	go func() {
		d, err := Open(context.Background(), testConfig(t, bst))
		bres <- result{d, err}
	}()
	// b has listed and waits at its first claim; a opens now.
	waitFor(t, "the second opener to list", listed.Load)
	a := openDisk(t, testConfig(t, mem))
	close(aOpened)
	r := <-bres
	if r.err == nil {
		r.d.abandon()
		t.Fatal("both writers opened the image")
	}
	if !errors.Is(r.err, ErrInUse) {
		t.Fatalf("second opener: got %v; want ErrInUse", r.err)
	}
	mustWrite(t, a, fill(4096, 1), 0)
	mustSync(t, a)
}

func isProbe(key string) bool {
	return len(key) > len(testPrefix+probeDir) && key[:len(testPrefix+probeDir)] == testPrefix+probeDir
}

// TestUploadsWaitForClaims: Open returns after its first claim and
// decides the rest of the window in the background; no segment of the
// writer is uploaded, and no FLUSH returns, before every claim has landed.
func TestUploadsWaitForClaims(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 1<<20)
	gate := make(chan struct{})
	held := &heldPuts{ch: map[string]chan struct{}{testPrefix + logDir + "0000000000000002": gate}}
	d, err := Open(t.Context(), testConfig(t, &hookStore{Store: mem, hook: held.hook}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.abandon)
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before abandon, which waits for the claims
	if d.nextSeq != 1+d.meta.Window {
		t.Fatalf("writes start at %d; want %d", d.nextSeq, 1+d.meta.Window)
	}
	x := fill(4096, 1)
	mustWrite(t, d, x, 0)
	flushed := make(chan error, 1)
	go func() { flushed <- d.Sync() }()
	waitFor(t, "the other claims", func() bool { _, ok := mem.Object(d.key(logDir, d.meta.Window)); return ok })
	time.Sleep(20 * time.Millisecond)
	if _, ok := mem.Object(d.key(logDir, d.nextSeq-1)); ok {
		t.Fatal("a segment was uploaded before the window's claims had landed")
	}
	select {
	case err := <-flushed:
		t.Fatalf("FLUSH returned (%v) before the window's claims had landed", err)
	default:
	}
	release()
	if err := <-flushed; err != nil {
		t.Fatalf("FLUSH: %v", err)
	}
	want := make([]byte, 1<<20)
	copy(want, x)
	requireEqual(t, readAll(t, mem), want, "a reader")
}

// TestClaimLostAfterOpenFences: a claim of the window that a newer
// writer wins first (its claim lands while this one's is held) fences
// this writer: its FLUSH fails and its writes are never visible.
func TestClaimLostAfterOpenFences(t *testing.T) {
	mem := NewMemStore()
	createImage(t, mem, 1<<20)
	key := testPrefix + logDir + "0000000000000002"
	held := &heldPuts{ch: map[string]chan struct{}{key: make(chan struct{})}}
	a, err := Open(t.Context(), testConfig(t, &hookStore{Store: mem, hook: held.hook}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.abandon)
	mustWrite(t, a, fill(4096, 1), 0)
	cfg := testConfig(t, mem)
	cfg.Takeover = true
	b := openDisk(t, cfg) // claims 2, the first number free
	if first := b.nextSeq - b.meta.Window; first != 2 {
		t.Fatalf("taker's first claim at %d; want 2", first)
	}
	close(held.ch[key])
	if err := a.Sync(); !errors.Is(err, ErrFenced) {
		t.Fatalf("the fenced writer's FLUSH: got %v; want ErrFenced", err)
	}
	requireViews(t, mem, b, make([]byte, 1<<20))
}

// TestClaimsPastFirstWhenNeeded: after Open only the first claim is in
// the store; READs start none of the others; the first WRITE's segment
// (and its FLUSH) waits until every number of the window is decided; and
// with no write they are decided after ClaimDelay anyway.
func TestClaimsPastFirstWhenNeeded(t *testing.T) {
	for _, write := range []bool{true, false} {
		mem := NewMemStore()
		createImage(t, mem, 1<<20)
		cfg := testConfig(t, mem)
		cfg.ClaimDelay = time.Hour // only a need starts them
		if !write {
			cfg.ClaimDelay = 50 * time.Millisecond
		}
		d, err := Open(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		claimed := func() (n uint64) {
			for s := uint64(1); s <= d.meta.Window; s++ {
				if _, ok := mem.Object(d.key(logDir, s)); ok {
					n++
				}
			}
			return n
		}
		if _, err := d.ReadAt(make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if write {
			time.Sleep(20 * time.Millisecond) // time for claims started at Open to land
		}
		if n := claimed(); n != 1 {
			t.Fatalf("%d claims in the store right after Open and a READ; want 1 (the first)", n)
		}
		if write {
			mustWrite(t, d, fill(4096, 1), 0)
			mustSync(t, d)
			if n := claimed(); n != d.meta.Window {
				t.Fatalf("FLUSH returned with %d of the window's %d numbers decided", n, d.meta.Window)
			}
		} else {
			waitFor(t, "the claims after claimDelay", func() bool { return claimed() == d.meta.Window })
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
