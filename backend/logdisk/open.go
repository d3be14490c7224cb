package logdisk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// Open opens the image under cfg.Prefix. A writable Open checks that the
// store honours put-if-absent, locks the journal directory, claims the
// image (refusing one that another writer holds, unless cfg.Takeover),
// and replays what the journal holds that the store does not.
//
// The requests that do not depend on each other go out together: the
// meta, the checkpoints' listing and the probe first, then the latest
// checkpoint with the log's listing and headers. The claims past the
// first are decided in the background (claimRest).
func Open(ctx context.Context, cfg Config) (*Disk, error) {
	if cfg.Snapshot != "" && !cfg.ReadOnly {
		return nil, fmt.Errorf("snapshot %s: %w", cfg.Snapshot, ErrSnapshotReadOnly)
	}
	if !cfg.ReadOnly && cfg.JournalDir == "" {
		return nil, errors.New("a writable image needs a journal directory")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the early requests of a failed Open
	var ckptList *future[ObjectInfo]
	var probe *future[struct{}]
	if cfg.Snapshot == "" {
		ckptList = goFuture(func() (ObjectInfo, error) { return listLatestCheckpoint(ctx, cfg.Store, cfg.Prefix) })
	}
	if !cfg.ReadOnly {
		probe = goFuture(func() (struct{}, error) { return struct{}{}, Probe(ctx, cfg.Store, cfg.Prefix) })
	}
	meta, err := readMeta(ctx, cfg.Store, cfg.Prefix)
	if err != nil {
		awaitAll(probe)
		if errors.Is(err, ErrNoImage) {
			// No image there: take back the probe's object, if it made one.
			cfg.Store.Delete(context.WithoutCancel(ctx), []string{cfg.Prefix + probeKey})
		}
		return nil, err
	}
	d := newDisk(cfg, meta)
	d.ckptList, d.probe = ckptList, probe
	st, scans, err := d.open(ctx)
	if err != nil {
		d.cancel()
		d.opening.Wait()
		awaitAll(d.probe)
		d.releaseBase()
		if d.journalLock != nil {
			d.journalLock.Close()
		}
		return nil, err
	}
	d.start()
	if !cfg.ReadOnly {
		if err := d.replay(ctx, st, scans); err != nil {
			d.abandon()
			return nil, err
		}
	}
	return d, nil
}

// future is the result of a request started ahead of its use.
type future[T any] struct {
	done chan struct{}
	v    T
	err  error
}

func goFuture[T any](f func() (T, error)) *future[T] {
	fu := &future[T]{done: make(chan struct{})}
	go func() {
		defer close(fu.done)
		fu.v, fu.err = f()
	}()
	return fu
}

func (f *future[T]) wait() (T, error) {
	<-f.done
	return f.v, f.err
}

// awaitAll waits for the request f stands for, if any, when its result
// will not be used (Open failed), so that none outlives Open.
func awaitAll[T any](f *future[T]) {
	if f != nil {
		f.wait()
	}
}

// awaitProbe returns the verdict of the put-if-absent probe Open started.
func (d *Disk) awaitProbe(ctx context.Context) error {
	p := d.probe
	if p == nil {
		return Probe(ctx, d.store, d.prefix)
	}
	d.probe = nil
	_, err := p.wait()
	return err
}

func newDisk(cfg Config, meta Meta) *Disk {
	d := &Disk{
		cfg: cfg, store: cfg.Store, prefix: cfg.Prefix, meta: meta, log: cfg.logger(),
		segs: map[uint64]*segment{}, ahead: map[uint64]*segment{}, progress: make(chan struct{}),
		cache:  newCache(cfg.cacheSize()),
		gcKick: make(chan struct{}, 1),
	}
	d.room = sync.NewCond(&d.mu)
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

func (d *Disk) open(ctx context.Context) (*loadState, []*journalScan, error) {
	if err := d.openBase(ctx); err != nil {
		return nil, nil, err
	}
	st, err := d.load(ctx)
	if err != nil {
		return nil, nil, err
	}
	if d.cfg.ReadOnly {
		d.apply(st)
		d.nextSeq, d.durable = st.max+1, st.max
		return st, nil, nil
	}
	if err := d.awaitProbe(ctx); err != nil {
		return nil, nil, err
	}
	if d.journalLock, err = lockDir(d.cfg.JournalDir); err != nil {
		return nil, nil, err
	}
	scans, err := d.scanJournals()
	if err != nil {
		return nil, nil, err
	}
	resumable, err := readWriterFile(d.cfg.JournalDir, d.meta.ID)
	if err != nil {
		return nil, nil, err
	}
	// The checkpoint's map is built while the first claim is under way.
	built := goFuture(func() (struct{}, error) { d.applyCheckpoint(st); return struct{}{}, nil })
	err = d.claim(ctx, st, resumable)
	built.wait()
	if err != nil {
		return nil, nil, err
	}
	mine := d.epoch
	if t := d.applyLog(st); t.epoch != mine {
		return nil, nil, fmt.Errorf("%w: another nbdd took the image over while this one was opening it", ErrInUse)
	}
	d.scheduleClaimRest()
	return st, scans, nil
}

// scanJournals reads the journal files left by a previous run.
func (d *Disk) scanJournals() ([]*journalScan, error) {
	paths, _, err := listJournals(d.cfg.JournalDir)
	if err != nil {
		return nil, err
	}
	var scans []*journalScan
	for _, p := range paths {
		s, err := scanJournal(p)
		if err != nil {
			d.log.Warn("journal file unreadable; ignored", "file", p, "err", err)
			continue
		}
		if s.hdr.ID != d.meta.ID {
			return nil, fmt.Errorf("journal directory %s holds the journal of another image (id %s, this image %s)", d.cfg.JournalDir, s.hdr.ID, d.meta.ID)
		}
		scans = append(scans, s)
	}
	// A file used again for a later segment keeps its name, and one
	// created may take the next free name (createJournal): the header
	// orders them.
	sort.Slice(scans, func(i, j int) bool { return scans[i].hdr.Local < scans[j].hdr.Local })
	return scans, nil
}

// replay rewrites what the journal files hold that the log lacks: the
// segments of the previous run that never landed, or landed only after
// this claim and so do not count. They follow everything of that run that
// counts, so replaying them in order, after it, restores the writes as
// they were acknowledged. A journal of an earlier writer than the log's
// last is dropped: another writer has written since.
func (d *Disk) replay(ctx context.Context, st *loadState, scans []*journalScan) error {
	resume := d.resumed
	if len(scans) == 0 {
		return nil
	}
	eff, _, _ := effective(st)
	counted := map[uint64]Epoch{}
	for _, h := range eff {
		counted[h.Seq] = h.Epoch
	}
	ours := resume != nil && d.lastResumable(eff, *resume)
	var n int
	for _, s := range scans {
		if e, ok := counted[s.hdr.Local]; ok && e == s.hdr.Epoch || s.hdr.Local <= st.base {
			continue // in the log already: at or below the checkpoint, only what landed
		}
		if !ours || s.hdr.Epoch != *resume {
			d.log.Warn("journal of an earlier writer dropped: the image was written by another since", "file", s.path)
			continue
		}
		if err := d.replayFile(s); err != nil {
			return err
		}
		n += len(s.records)
	}
	if n > 0 {
		d.log.Info("replayed the journal", "image", d.prefix, "records", n)
		if err := d.Sync(); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
	}
	for _, s := range scans {
		if err := os.Remove(s.path); err != nil {
			return err
		}
	}
	return nil
}

// lastResumable reports whether epoch was the log's writer just before
// this claim.
func (d *Disk) lastResumable(eff []*logHeader, epoch Epoch) bool {
	var last Epoch
	for _, h := range eff {
		if h.Epoch == d.epoch {
			break
		}
		last = h.Epoch
	}
	if len(eff) == 0 || last == (Epoch{}) {
		return false
	}
	return last == epoch
}

func (d *Disk) replayFile(s *journalScan) error {
	f, err := os.Open(s.path)
	if err != nil {
		return err
	}
	defer f.Close()
	var buf []byte
	for _, r := range s.records {
		var data []byte
		if extKind(r.Kind) == kindData {
			buf = grow(buf, int(r.Len))
			if _, err := f.ReadAt(buf, r.DataOff); err != nil {
				return fmt.Errorf("replay %s: %w", s.path, err)
			}
			data = buf
		}
		if err := d.checkRange(r.Off, r.Len); err != nil {
			return fmt.Errorf("replay %s: %w", s.path, err)
		}
		if err := d.appendExtent(extKind(r.Kind), r.Off, r.Len, data, r.CRC); err != nil {
			return err
		}
	}
	return nil
}

// start runs the upload workers and, for a writer, garbage collection.
func (d *Disk) start() {
	if d.cfg.ReadOnly {
		return
	}
	for range d.cfg.uploads() {
		d.wg.Add(1)
		go d.uploader()
	}
	if !d.cfg.NoGC {
		d.wg.Add(1)
		go d.gcLoop()
	}
}

// writerState is the journal directory's record of the epoch its writer
// claimed: after a crash, the restarted nbdd is that writer and resumes
// without a takeover. It is written while the claim is under way, so it
// also names the epoch the claim resumes from (Prev): should the claim
// never land, the journal still belongs to that one.
type writerState struct {
	ID    string       `json:"id"`
	Epoch uint64       `json:"epoch"`
	Nonce uint64       `json:"nonce"`
	Prev  *writerEpoch `json:"prev,omitempty"`
}

type writerEpoch struct {
	Epoch uint64 `json:"epoch"`
	Nonce uint64 `json:"nonce"`
}

const writerFile = "writer"

// readWriterFile returns the epochs the journal directory may belong to:
// the last claimed, and the one that claim resumed from.
func readWriterFile(dir, id string) ([]Epoch, error) {
	b, err := os.ReadFile(filepath.Join(dir, writerFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var w writerState
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("journal directory %s: %s: %w", dir, writerFile, corrupt("%v", err))
	}
	if w.ID != id {
		return nil, fmt.Errorf("journal directory %s belongs to another image (id %s, this image %s)", dir, w.ID, id)
	}
	out := []Epoch{{N: w.Epoch, Nonce: w.Nonce}}
	if w.Prev != nil {
		out = append(out, Epoch{N: w.Prev.Epoch, Nonce: w.Prev.Nonce})
	}
	return out, nil
}

// writeWriterFile records epoch durably (write, fsync, rename, fsync the
// directory).
func writeWriterFile(dir, id string, e Epoch, prev *Epoch) error {
	w := writerState{ID: id, Epoch: e.N, Nonce: e.Nonce}
	if prev != nil {
		w.Prev = &writerEpoch{Epoch: prev.N, Nonce: prev.Nonce}
	}
	b, _ := json.Marshal(w)
	tmp := filepath.Join(dir, writerFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, writerFile))
	}
	if err != nil {
		return fmt.Errorf("journal directory %s: %w", dir, err)
	}
	if df, err := os.Open(dir); err == nil {
		df.Sync()
		df.Close()
	}
	return nil
}
