package logdisk

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
// resume is the epoch of this journal's previous writer: when the log's
// last writer is that epoch (this nbdd, restarted after a crash), the
// image counts as not held.
func (d *Disk) claim(ctx context.Context, st *loadState, resume *Epoch) error {
	_, _, t := effective(st)
	held := !t.closed && !(resume != nil && *resume == t.epoch)
	if held && !d.cfg.Takeover {
		return fmt.Errorf("%w (writer epoch %d; its nbdd may still run, or died without closing): use takeover to fence it", ErrInUse, t.epoch.N)
	}
	mine := Epoch{N: t.epoch.N + 1, Nonce: randomNonce()}
	d.epoch = mine
	first, err := d.claimFirst(ctx, st, t.epoch, mine)
	if err != nil {
		return err
	}
	end := max(first+d.meta.Window-1, st.max)
	if err := d.claimRest(ctx, st, first, end, mine); err != nil {
		return err
	}
	d.nextSeq, d.durable = end+1, end
	return nil
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

// claimRest decides every sequence number in (first, end].
func (d *Disk) claimRest(ctx context.Context, st *loadState, first, end uint64, mine Epoch) error {
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var todo []uint64
	for s := first + 1; s <= end; s++ {
		if st.hdrs[s] == nil {
			todo = append(todo, s)
		}
	}
	for _, s := range todo {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			h, _, err := d.claimAt(ctx, s, mine)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				firstErr = cmpErr(firstErr, err)
			case mine.Less(h.Epoch):
				firstErr = cmpErr(firstErr, fmt.Errorf("%w: another nbdd took the image over while this one was opening it", ErrInUse))
			default:
				st.hdrs[s] = h
			}
		}()
	}
	wg.Wait()
	return firstErr
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
