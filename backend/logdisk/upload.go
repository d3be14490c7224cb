package logdisk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// uploader is one upload worker: it PUTs sealed segments in sequence
// order, never more than the window past the lowest one not yet in the
// store, so a taker can bound where this writer's objects may land.
func (d *Disk) uploader() {
	defer d.wg.Done()
	for {
		s := d.nextUpload()
		if s == nil {
			return
		}
		body := &sectionBody{hdr: s.hdr, f: s.jf.f, size: s.hdrLen + s.dataLen}
		err := d.putOwn(d.key(logDir, s.seq), body, s.seq)
		d.landed(s, err)
		d.sealPending()
	}
}

func (d *Disk) nextUpload() *segment {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		switch {
		case d.failed != nil || d.ctx.Err() != nil:
			return nil
		case len(d.queue) > 0 && d.queue[0].seq <= d.durable+d.meta.Window && d.durable >= d.claimEnd:
			s := d.queue[0]
			d.queue = d.queue[1:]
			d.inFlight++
			return s
		case d.closing && len(d.queue) == 0:
			return nil
		}
		d.room.Wait()
	}
}

// putOwn writes a log or checkpoint object of this writer, retrying
// transient failures with backoff for as long as the Disk is open. A
// collision means another writer holds the sequence number, unless the
// object there is this writer's own (an earlier attempt that landed but
// whose answer was lost).
func (d *Disk) putOwn(key string, body *sectionBody, seq uint64) error {
	err := d.retry(d.ctx, "put "+key, func(ctx context.Context) error {
		err := d.store.PutIfAbsent(ctx, key, body, body.size)
		if err == nil {
			d.count(func(s *Stats) { s.Puts++; s.PutBytes += body.size })
		}
		return err
	})
	if !errors.Is(err, ErrExists) {
		return err
	}
	if d.ownsObject(key, seq) {
		return nil
	}
	return fmt.Errorf("%w (%s was written by another writer)", ErrFenced, key)
}

// ownsObject reports whether the log object at key is this writer's
// object seq. Checkpoints are equal whoever wrote them, so they count as
// owned.
func (d *Disk) ownsObject(key string, seq uint64) bool {
	if key == d.key(ckptDir, seq) {
		return true
	}
	h, err := d.readHeader(d.ctx, seq)
	return err == nil && h.Seq == seq && h.Epoch == d.epoch
}

// retry runs op until it succeeds, fails permanently, or ctx ends,
// backing off from 50 ms to 5 s between attempts. It logs the first
// failure of a run and then every 30 s.
func (d *Disk) retry(ctx context.Context, what string, op func(context.Context) error) error {
	backoff := 50 * time.Millisecond
	var lastLog time.Time
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil {
			if attempt > 1 {
				d.log.Info("s3 store reachable again", "op", what, "attempts", attempt)
			}
			return nil
		}
		if isPermanent(err) || ctx.Err() != nil {
			return err
		}
		d.count(func(s *Stats) { s.Retries++ })
		if time.Since(lastLog) > 30*time.Second {
			d.log.Warn("s3 request failed; retrying", "op", what, "attempt", attempt, "err", err)
			lastLog = time.Now()
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// landed records the end of a segment's upload.
func (d *Disk) landed(s *segment, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inFlight--
	if err != nil {
		if d.ctx.Err() == nil {
			d.failLocked(err)
		}
		return
	}
	s.landed, s.hdr = true, nil
	d.dirty -= s.dataLen
	d.landedLocked(s.seq, s)
}

// landedLocked advances durable past seq when everything below it landed,
// and drops the journal files of the segments now durable: until then a
// restart replays them, in order.
func (d *Disk) landedLocked(seq uint64, s *segment) {
	d.ahead[seq] = s
	for {
		next, ok := d.ahead[d.durable+1]
		if !ok {
			break
		}
		delete(d.ahead, d.durable+1)
		d.durable++
		if next != nil {
			next.durable = true
			d.dropJournalLocked(next)
		}
	}
	d.notifyLocked()
	d.ckpt.durableAdvanced(d)
}

// Journal files up to reuseJournalMax bytes are kept for later segments,
// at most freeJournalsMax of them: the small segments of FLUSH-heavy
// writers then cost no file creation and deletion each, and the files
// kept hold little disk. Larger ones are deleted (a 16 MiB segment's
// upload dwarfs both).
const (
	reuseJournalMax = 1 << 20
	freeJournalsMax = 16
)

// dropJournalLocked frees a durable segment's journal file once no read
// uses it; reads then go to the store (or the read cache).
func (d *Disk) dropJournalLocked(s *segment) {
	if s.jf == nil || s.refs > 0 || !s.durable {
		return
	}
	if s.jf.size <= reuseJournalMax && len(d.freeJournals) < freeJournalsMax && !d.closing {
		d.freeJournals = append(d.freeJournals, s.jf)
	} else {
		s.jf.remove()
	}
	s.jf = nil
}

// putSmall writes a small object of this writer (claims, closes,
// checkpoints) with retries.
func (d *Disk) putSmall(ctx context.Context, key string, b []byte, seq uint64) error {
	body := &sectionBody{hdr: b, f: bytes.NewReader(nil), size: int64(len(b))}
	return d.putOwnCtx(ctx, key, body, seq)
}

func (d *Disk) putOwnCtx(ctx context.Context, key string, body *sectionBody, seq uint64) error {
	err := d.retry(ctx, "put "+key, func(ctx context.Context) error {
		return d.store.PutIfAbsent(ctx, key, body, body.size)
	})
	if errors.Is(err, ErrExists) && d.ownsObject(key, seq) {
		return nil
	}
	return err
}

func (d *Disk) count(f func(*Stats)) {
	d.statsMu.Lock()
	f(&d.stats)
	d.statsMu.Unlock()
}

// Stats returns the Disk's request counts so far.
func (d *Disk) Stats() Stats {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	return d.stats
}
