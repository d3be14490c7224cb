package logdisk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
)

const testPrefix = "img/"

// testConfig is a small, fast configuration over st.
func testConfig(t testing.TB, st Store) Config {
	return Config{
		Store: st, Prefix: testPrefix, JournalDir: t.TempDir(),
		SegmentSize: 64 << 10, FlushTimeout: 5 * time.Second, NoGC: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func createImage(t testing.TB, st Store, size int64) {
	t.Helper()
	if err := Create(context.Background(), Config{Store: st, Prefix: testPrefix}, size); err != nil {
		t.Fatalf("Create: %v", err)
	}
}

func openDisk(t testing.TB, cfg Config) *Disk {
	t.Helper()
	d, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	d.startClaims(true)
	d.opening.Wait() // the claims past the first, so a test's hooks see only its own requests
	t.Cleanup(func() { d.abandon() })
	return d
}

// readAll reads the whole image through a read-only Disk opened afresh.
func readAll(t testing.TB, st Store) []byte {
	t.Helper()
	cfg := testConfig(t, st)
	cfg.ReadOnly = true
	d := openDisk(t, cfg)
	size, _ := d.Size()
	b := make([]byte, size)
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	return b
}

// writtenImage creates an image of size bytes in st, writes model at
// offset 0 and closes the writer, so that every byte is in a segment; it
// returns model.
func writtenImage(t testing.TB, st Store, size int64, model []byte) []byte {
	t.Helper()
	createImage(t, st, size)
	w := openDisk(t, testConfig(t, st))
	mustWrite(t, w, model, 0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return model
}

// readOnlyConfig is testConfig for a read-only open.
func readOnlyConfig(t testing.TB, st Store) Config {
	cfg := testConfig(t, st)
	cfg.ReadOnly = true
	return cfg
}

func mustWrite(t testing.TB, d *Disk, p []byte, off int64) {
	t.Helper()
	if _, err := d.WriteAt(p, off); err != nil {
		t.Fatalf("WriteAt %d+%d: %v", off, len(p), err)
	}
}

func mustSync(t testing.TB, d *Disk) {
	t.Helper()
	if err := d.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func fill(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// requireReads checks that d reads want from offset 0.
func requireReads(t testing.TB, d *Disk, want []byte, what string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	requireEqual(t, got, want, what)
}

func requireEqual(t testing.TB, got, want []byte, what string) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: differs first at byte %d (len got %d, want %d)", what, i, len(got), len(want))
	}
}

// gate holds PUTs of chosen keys until released, to order two writers'
// requests deterministically.
type gate struct {
	held map[string]chan struct{}
}

func newGate() *gate { return &gate{held: map[string]chan struct{}{}} }

func (g *gate) hold(key string) { g.held[key] = make(chan struct{}) }

func (g *gate) release(key string) { close(g.held[key]) }

func (g *gate) hook(op Op, key string) error {
	if ch, ok := g.held[key]; ok && op == OpPut {
		<-ch
	}
	return nil
}

var errInjected = errors.New("injected: connection reset")

// failPuts is a store hook that fails every PUT, so segments stay in the
// journal only.
func failPuts(op Op, key string) error {
	if op == OpPut {
		return errInjected
	}
	return nil
}

var _ backend.Backend = (*Disk)(nil)
var _ backend.Trimmer = (*Disk)(nil)
var _ backend.FastZeroer = (*Disk)(nil)
var _ backend.FUAWriter = (*Disk)(nil)
var _ backend.Extenter = (*Disk)(nil)
var _ backend.MultiConner = (*Disk)(nil)
var _ backend.Cacher = (*Disk)(nil)

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func newBytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
