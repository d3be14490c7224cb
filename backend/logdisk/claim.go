package logdisk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// claim makes this Disk the image's writer (docs/s3.md "Fencing").
//
// It picks an epoch above every epoch in the log and writes claim objects
// with put-if-absent at every sequence number after the checkpoint that no
// object holds, in order, until one lands: its first claim p. Every
// earlier writer is then stuck below p (it can never write p), and writes
// at most Window objects past its lowest unfinished one, so its objects
// all lie below p+Window. claim decides every number up to there, in
// parallel: a claim lands, or the object that won is read. Readers apply
// the log in order and ignore objects whose epoch is below one seen
// earlier, so an old writer's object that lands after p is never seen.
//
// resumable are the epochs the journal directory may belong to: when the
// log's last writer is one of them (this nbdd, restarted after a crash),
// the image counts as not held, and the journal is replayed (d.resumed).
// The journal directory's writer file is written while the first claim
// is under way, and no journal file of this writer is created before it
// is durable (awaitWriterFileLocked). claim leaves the numbers past the
// first claim to scheduleClaimRest.
func (d *Disk) claim(ctx context.Context, st *loadState, resumable []Epoch) error {
	_, _, t := effective(st)
	for _, e := range resumable {
		if e == t.epoch {
			d.resumed = &e
		}
	}
	held := !t.closed && d.resumed == nil
	if held && !d.cfg.Takeover {
		return fmt.Errorf("%w (writer epoch %d; its nbdd may still run, or died without closing): use takeover to fence it", ErrInUse, t.epoch.N)
	}
	mine := Epoch{N: t.epoch.N + 1, Nonce: randomNonce()}
	d.epoch = mine
	d.opening.Add(1) // Close and a failed Open wait for it before they unlock the directory
	d.writerFile = goFuture(func() (struct{}, error) {
		defer d.opening.Done()
		return struct{}{}, writeWriterFile(d.cfg.JournalDir, d.meta.ID, mine, d.resumed)
	})
	first, err := d.claimFirst(ctx, st, t.epoch, mine)
	if err != nil {
		d.writerFile.wait()
		return err
	}
	end := max(first+d.meta.Window-1, st.max)
	var todo []uint64
	for s := first + 1; s <= end; s++ {
		if st.hdrs[s] == nil {
			todo = append(todo, s)
		}
	}
	d.nextSeq, d.durable, d.claimEnd = end+1, end, end
	if len(todo) > 0 {
		d.durable = todo[0] - 1
		for s := todo[0]; s <= end; s++ {
			if st.hdrs[s] != nil {
				d.ahead[s] = nil // decided already: an object holds it
			}
		}
		d.claimTodo = todo
	}
	return nil
}

// scheduleClaimRest leaves the numbers claim did not decide to claimRest,
// once the map is built (claimRest updates what apply sets). claimRest
// starts when they are first needed (startClaims: a new segment, which
// will be uploaded, or a wait for durability: FLUSH, FUA, Close), or
// after Config.ClaimDelay: the first READs of an open export, which
// need none of them, then do not share the CPU and the store with a
// window's worth of PUTs.
func (d *Disk) scheduleClaimRest() {
	todo, mine := d.claimTodo, d.epoch
	d.claimTodo = nil
	if len(todo) == 0 {
		return
	}
	d.opening.Add(1) // claimRest's, or startClaims(false)'s
	d.runClaims = func() { go d.claimRest(todo, mine) }
	time.AfterFunc(d.cfg.claimDelay(), func() { d.startClaims(true) }) // a no-op once started
}

// startClaims starts claimRest if it has not started, or with run false
// (the Disk is stopping) makes sure it never does.
func (d *Disk) startClaims(run bool) {
	d.claimsOnce.Do(func() {
		switch {
		case d.runClaims == nil: // none scheduled: a reader, or Open failed
		case run:
			d.runClaims()
		default:
			d.opening.Done()
		}
	})
}

// claimFirst claims the lowest free sequence number after the checkpoint,
// reading whatever wins at each number it loses.
func (d *Disk) claimFirst(ctx context.Context, st *loadState, seen, mine Epoch) (uint64, error) {
	for s := st.base + 1; ; s++ {
		if st.hdrs[s] != nil {
			continue
		}
		h, won, err := d.claimAt(ctx, s, mine)
		if err != nil {
			return 0, err
		}
		st.hdrs[s], st.max = h, max(st.max, s)
		if won {
			return s, nil
		}
		switch {
		case mine.Less(h.Epoch):
			return 0, fmt.Errorf("%w: another nbdd took the image over while this one was opening it", ErrInUse)
		case h.Kind == objClaim && seen.Less(h.Epoch) && !d.cfg.Takeover:
			return 0, fmt.Errorf("%w: another nbdd is opening it for writing at the same time", ErrInUse)
		}
	}
}

// claimRest decides the sequence numbers todo, all above the first
// claim, in parallel and in the background: a claim lands, or the object
// that won is read. Each decided number counts as durable, and uploads
// wait until every number up to claimEnd is (nextUpload), so this
// writer's objects still land only after the window is decided. Reads
// need none of it: whatever an old writer lands there comes after this
// writer's first claim, so no reader counts it.
func (d *Disk) claimRest(todo []uint64, mine Epoch) {
	defer d.opening.Done()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, s := range todo {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			h, _, err := d.claimAt(d.ctx, s, mine)
			d.mu.Lock()
			defer d.mu.Unlock()
			switch {
			case err != nil:
				if d.ctx.Err() == nil {
					d.failLocked(err)
				}
			case mine.Less(h.Epoch):
				d.failLocked(fmt.Errorf("%w: another nbdd took the image over while this one was opening it", ErrFenced))
			default:
				d.landedLocked(s, nil)
			}
		}()
	}
	wg.Wait()
}

// claimAt writes a claim object at seq. It returns the header of the
// object that holds seq afterwards, and whether it is this claim.
func (d *Disk) claimAt(ctx context.Context, seq uint64, mine Epoch) (*logHeader, bool, error) {
	h := &logHeader{Kind: objClaim, Seq: seq, Epoch: mine}
	b := h.appendBinary(nil)
	key := d.key(logDir, seq)
	err := d.retry(ctx, "put "+key, func(ctx context.Context) error {
		return d.store.PutIfAbsent(ctx, key, &sectionBody{hdr: b, size: int64(len(b))}, int64(len(b)))
	})
	if err == nil {
		return h, true, nil
	}
	if !errors.Is(err, ErrExists) {
		return nil, false, fmt.Errorf("claim %s: %w", key, err)
	}
	var got *logHeader
	err = d.retry(ctx, "get "+key, func(ctx context.Context) error {
		var err error
		got, err = d.readHeader(ctx, seq)
		return err
	})
	if err != nil {
		return nil, false, fmt.Errorf("claim %s: %w", key, err)
	}
	return got, got.Epoch == mine, nil
}
