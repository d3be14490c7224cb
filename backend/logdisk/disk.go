package logdisk

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbdd/nbdd/backend"
)

// Config configures a Disk. The zero value of every field but Store (and
// JournalDir for a writable Disk) picks a default.
type Config struct {
	// Store holds the image; Prefix names it (every key starts with
	// Prefix, which normally ends in "/").
	Store  Store
	Prefix string
	// ReadOnly opens the image without writing anything to the store.
	ReadOnly bool
	// Snapshot opens the sealed snapshot of that name instead of the
	// image's latest state; it must be ReadOnly.
	Snapshot string
	// Bases shares the base snapshots of clones among the Disks opened
	// with it (nil: each clone opens its own).
	Bases *Bases
	// BaseStore returns the store of a clone's base in another bucket
	// (nil: Store, whatever the bucket).
	BaseStore func(ctx context.Context, bucket string) (Store, error)
	// Takeover lets a writer open an image that another writer holds (or
	// held, and did not close): the other is fenced.
	Takeover bool
	// JournalDir is the local directory of the journal (required to
	// write). It belongs to one image; a second process cannot use it.
	JournalDir string
	// SegmentSize seals a segment once it holds this many bytes (16 MiB).
	SegmentSize int64
	// DirtyLimit bounds the journal bytes not yet in the store; a WRITE
	// waits while it is reached (1 GiB).
	DirtyLimit int64
	// Uploads is the number of segment PUTs at once (8).
	Uploads int
	// Reads is the number of ranged GETs at once (32).
	Reads int
	// CacheSize bounds the read cache in memory (256 MiB; negative: none).
	CacheSize int64
	// ReadAhead is how far ahead of a sequential reader to fetch (16 MiB;
	// negative: none).
	ReadAhead int64
	// FlushTimeout is how long FLUSH and FUA wait for the store before
	// failing with an error (60 s). Uploads go on in the background.
	FlushTimeout time.Duration
	// CheckpointEvery writes a checkpoint after this many segments (512).
	CheckpointEvery int
	// GCGrace is how long an object no longer referenced by the latest
	// checkpoint stays, for readers that opened before (10 min).
	GCGrace time.Duration
	// GCLiveRatio: garbage collection rewrites segments whose live bytes
	// are below this share of their data (0.7).
	GCLiveRatio float64
	// NoGC turns off the writer's background garbage collection.
	NoGC bool
	// ClaimDelay is how long after Open a writer decides its window's
	// numbers past the first claim, unless a WRITE, FLUSH or Close needs
	// them sooner (100 ms): the first READs after an open then do not
	// share the CPU and the store with a window's worth of PUTs.
	ClaimDelay time.Duration
	// Logger receives warnings and errors (slog.Default()).
	Logger *slog.Logger

	depth int // how many clones read through to this Disk
}

func (c *Config) segmentSize() int64 { return orDefault(c.SegmentSize, 16<<20) }
func (c *Config) dirtyLimit() int64  { return orDefault(c.DirtyLimit, 1<<30) }
func (c *Config) uploads() int       { return int(orDefault(int64(c.Uploads), 8)) }
func (c *Config) reads() int         { return int(orDefault(int64(c.Reads), 32)) }
func (c *Config) cacheSize() int64   { return orDefault(c.CacheSize, 256<<20) }
func (c *Config) readAhead() int64   { return orDefault(c.ReadAhead, 16<<20) }
func (c *Config) ckptEvery() int     { return int(orDefault(int64(c.CheckpointEvery), 512)) }
func (c *Config) gcLiveRatio() float64 {
	if c.GCLiveRatio > 0 {
		return c.GCLiveRatio
	}
	return 0.7
}
func (c *Config) claimDelay() time.Duration {
	if c.ClaimDelay > 0 {
		return c.ClaimDelay
	}
	return 100 * time.Millisecond
}

func (c *Config) flushTimeout() time.Duration {
	return time.Duration(orDefault(int64(c.FlushTimeout), int64(60*time.Second)))
}
func (c *Config) gcGrace() time.Duration {
	return time.Duration(orDefault(int64(c.GCGrace), int64(10*time.Minute)))
}
func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

func orDefault(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// Errors of a Disk.
var (
	// ErrFenced is returned by every request once another writer has
	// taken the image over.
	ErrFenced = errors.New("logdisk: another writer took the image over; this one is fenced")
	// ErrFlushTimeout is returned by FLUSH and FUA writes that could not
	// reach the store within Config.FlushTimeout.
	ErrFlushTimeout = errors.New("logdisk: the store did not take the data within the flush timeout")
	// ErrClosed is returned by requests after Close.
	ErrClosed = errors.New("logdisk: closed")
	// ErrInUse is returned by a writable Open of an image that another
	// writer holds, without Config.Takeover.
	ErrInUse = errors.New("image is open for writing by another nbdd")
	// ErrNoImage is returned by Open when the prefix holds no image.
	ErrNoImage = errors.New("no image")
	// ErrImageExists is returned by Create when the prefix holds one.
	ErrImageExists = errors.New("an image exists there already")
	// ErrNoConditionalPut is returned by a writable Open when the store
	// does not honour put-if-absent.
	ErrNoConditionalPut = errors.New("the S3 server does not honour conditional writes (PUT with If-None-Match: *), which writers need to fence each other")
)

// Create writes a new empty image of size bytes under cfg.Prefix.
func Create(ctx context.Context, cfg Config, size int64) error {
	if size <= 0 || size > maxSize {
		return fmt.Errorf("image size %d: want 1 byte to %d", size, int64(maxSize))
	}
	var id [16]byte
	rand.Read(id[:])
	m := Meta{Format: formatName, Version: formatV1, ID: hex.EncodeToString(id[:]), Size: size, Window: defaultWindow}
	return putMeta(ctx, cfg.Store, cfg.Prefix, m)
}

// Probe checks that the store refuses a put-if-absent of a key that
// exists: it makes sure the probe object under prefix exists, then
// requires a conditional PUT of it to fail. The object stays, so every
// later Probe costs one PUT. Nothing is taken on trust from an earlier
// probe: every writable Open sends a conditional PUT of an object that
// exists, and a store that lets it overwrite is refused, also when it
// once refused (another server behind the same name).
func Probe(ctx context.Context, st Store, prefix string) error {
	key := prefix + probeKey
	body := []byte("nbdd put-if-absent probe: every writable open PUTs this with If-None-Match: * and requires a refusal\n")
	for range 2 { // the first may create it
		err := st.PutIfAbsent(ctx, key, bytes.NewReader(body), int64(len(body)))
		switch {
		case errors.Is(err, ErrExists):
			return nil
		case err != nil:
			return fmt.Errorf("probe %s: %w", key, err)
		}
	}
	return ErrNoConditionalPut
}

// readMeta reads the image's meta object.
func readMeta(ctx context.Context, st Store, prefix string) (Meta, error) {
	b := make([]byte, 64<<10)
	n, err := st.ReadAt(ctx, prefix+metaKey, b, 0)
	if errors.Is(err, ErrNotFound) {
		return Meta{}, ErrNoImage
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return Meta{}, err
	}
	return decodeMeta(b[:n])
}

// Disk is an image opened from a Store: a backend.Backend with TRIM,
// WRITE_ZEROES, FUA, block status and multi-conn.
type Disk struct {
	cfg    Config
	store  Store
	prefix string
	meta   Meta
	log    *slog.Logger
	ctx    context.Context // canceled by Close when it gives up on the store
	cancel context.CancelFunc

	// appendMu orders appends to the journal: held across a record's
	// write and its map update, so the map changes in journal order.
	appendMu sync.Mutex

	mu         sync.Mutex // guards what follows
	room       *sync.Cond // signalled when dirty falls or the Disk fails
	m          extMap
	segs       map[uint64]*segment // every segment the map references, and in flight
	epoch      Epoch               // this writer's (or the last seen, read-only)
	openSeg    *segment            // accepting writes; nil until the next write
	nextSeq    uint64
	queue      []*segment // sealed, not yet uploading, in sequence order
	inFlight   int
	durable    uint64              // every log object <= durable is in the store
	claimEnd   uint64              // uploads wait until durable reaches it (claimRest)
	claimTodo  []uint64            // the numbers claim left to claimRest, until scheduled
	claimsOnce sync.Once           // starts claimRest, or rules it out (startClaims)
	runClaims  func()              // starts claimRest (scheduleClaimRest)
	writerFile *future[struct{}]   // the journal directory's writer file being written; nil once durable
	ahead      map[uint64]*segment // landed above durable (nil: not a segment)
	dirty      int64
	pending    bool // a FLUSH waits for the open segment to be sealed
	failed     error
	closing    bool
	stopped    bool          // abandoned: the read cache is gone
	progress   chan struct{} // closed and replaced when durable or failed changes
	// freeJournals are journal files whose segments are durable, kept
	// open for later segments (journalFile.reuse).
	freeJournals []*journalFile

	ckptList *future[ObjectInfo] // the checkpoint listing Open started early
	probe    *future[struct{}]   // the put-if-absent probe Open started early

	ckpt      ckptState
	garbage   []uint64             // log objects below the next checkpoint that nothing references
	lastTail  tail                 // the log's writer state as found at open
	resumed   *Epoch               // the epoch of the journal found at open, if the log's last writer
	doomed    map[string]time.Time // unreferenced objects, when first seen so
	sweptAt   uint64               // the checkpoint the last sweep went by
	dataBytes int64                // sum of dataLen of the segments in segs

	clone       cloneState // the base a clone reads through to
	journalLock *os.File
	cache       *cache
	getJobs     chan getJob // to the GET workers of the read path
	getOnce     sync.Once   // starts them
	ra          readAhead
	wg          sync.WaitGroup
	opening     sync.WaitGroup // Open's work still under way: the claims past the first, the writer file
	gcKick      chan struct{}
	lastWrite   atomic.Int64 // UnixNano of the last client WRITE, TRIM, WRITE_ZEROES or FLUSH
	statsMu     sync.Mutex
	stats       Stats
}

// segment is a log object with data, as the Disk tracks it.
type segment struct {
	seq     uint64
	hdrLen  int64 // the data region starts here in the object
	dataLen int64
	live    int64 // bytes the map references
	// A writer's own segment until it is in the store (guarded by Disk.mu):
	jf      *journalFile // the journal file; nil once in the store and unused
	refs    int          // reads of jf in progress
	hdr     []byte       // the encoded header, once sealed
	extents []logExtent
	landed  bool
	durable bool // landed, and so has everything before it
}

// Stats counts a Disk's traffic with the store.
type Stats struct {
	Puts, PutBytes, Gets, GetBytes, Retries int64
}

func (d *Disk) key(dir string, seq uint64) string { return seqKey(d.prefix, dir, seq) }

// Size implements backend.Backend.
func (d *Disk) Size() (int64, error) { return d.meta.Size, nil }

// ReadOnly implements backend.ReadOnlyer.
func (d *Disk) ReadOnly() bool { return d.cfg.ReadOnly }

// CanMultiConn implements backend.MultiConner: every connection shares the
// one map and log, so a FLUSH on one covers writes made on any.
func (d *Disk) CanMultiConn() bool { return true }

// CanFastZero implements backend.FastZeroer: zeroing writes a map entry.
func (d *Disk) CanFastZero() bool { return true }

// Meta returns the image's parameters.
func (d *Disk) Meta() Meta { return d.meta }

func (d *Disk) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > d.meta.Size || n > d.meta.Size-off {
		return fmt.Errorf("%d+%d: %w", off, n, backend.ErrOutOfRange)
	}
	return nil
}

// failLocked stops the Disk with err (the first error sticks).
func (d *Disk) failLocked(err error) {
	if d.failed == nil {
		d.failed = err
		d.log.Error("s3 image failed; every request now fails", "image", d.prefix, "err", err)
	}
	d.notifyLocked()
}

// notifyLocked wakes FLUSHes and writers waiting for room.
func (d *Disk) notifyLocked() {
	close(d.progress)
	d.progress = make(chan struct{})
	d.room.Broadcast()
}

func randomNonce() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

// sectionBody is a segment's upload body: its header, then its journal
// file, as one io.ReadSeeker.
type sectionBody struct {
	hdr  []byte
	f    io.ReaderAt
	size int64 // header plus data
	pos  int64
}

func (b *sectionBody) Read(p []byte) (int, error) {
	if b.pos >= b.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), b.size-b.pos)]
	var n int
	var err error
	if h := int64(len(b.hdr)); b.pos < h {
		n = copy(p, b.hdr[b.pos:])
	} else {
		n, err = b.f.ReadAt(p, b.pos-h)
		if err == io.EOF && n == len(p) {
			err = nil
		}
	}
	b.pos += int64(n)
	return n, err
}

func (b *sectionBody) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += b.pos
	case io.SeekEnd:
		off += b.size
	}
	if off < 0 {
		return 0, errors.New("seek before start")
	}
	b.pos = off
	return off, nil
}
