package logdisk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbdd/nbdd/backend"
)

// piece is one part of a READ: a data extent to fetch into dst.
type piece struct {
	dst   []byte
	m     mapping
	seg   *segment
	local bool // from the segment's journal file (a reference is held)
	base  bool // never written in a clone: from its base, at m.off
}

// ReadAt implements io.ReaderAt. Holes and zero extents are filled
// locally; data comes from the journal while its segment is not yet in
// the store, else from the read cache or ranged GETs, in parallel.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	d.readAheadAt(off, int64(len(p)))
	err := d.read(p, off)
	if errors.Is(err, ErrNotFound) && d.cfg.ReadOnly && d.cfg.Snapshot == "" {
		// The writer's garbage collection deleted a segment this reader's
		// map still names: load the log as it is now and read again.
		if rerr := d.refresh(); rerr != nil {
			return 0, errors.Join(err, rerr)
		}
		err = d.read(p, off)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (d *Disk) read(p []byte, off int64) error {
	pieces, err := d.resolve(p, off)
	if err != nil {
		return err
	}
	err = d.readPieces(pieces)
	d.release(pieces)
	return err
}

// refresh reloads a read-only Disk's map from the store.
func (d *Disk) refresh() error {
	ctx, cancel := context.WithTimeout(d.ctx, readTimeout)
	defer cancel()
	fresh := newDisk(d.cfg, d.meta)
	fresh.cache.close()
	fresh.cancel()
	fresh.store = d.store
	st, err := fresh.loadLog(ctx)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	fresh.apply(st)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m, d.segs, d.epoch, d.lastTail = fresh.m, fresh.segs, fresh.epoch, fresh.lastTail
	d.ckpt.seq, d.dataBytes = fresh.ckpt.seq, fresh.dataBytes
	d.nextSeq, d.durable = st.max+1, st.max
	d.log.Info("reloaded the image: a segment was collected since it was opened", "image", d.prefix, "checkpoint", d.ckpt.seq)
	return nil
}

// resolve looks [off, off+len(p)) up in the map, zeroes what holds no
// data, and returns the data pieces, holding a reference on each journal
// file it will read.
func (d *Disk) resolve(p []byte, off int64) ([]piece, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.failed != nil:
		return nil, d.failed
	case d.stopped:
		return nil, ErrClosed
	}
	var pieces []piece
	pos := off
	end := off + int64(len(p))
	d.m.each(off, end, func(m mapping) bool {
		pieces = d.missLocked(pieces, p[pos-off:m.off-off], pos)
		dst := p[m.off-off : m.end()-off]
		pos = m.end()
		if m.kind != kindData {
			clear(dst)
			return true
		}
		s := d.segs[m.seg]
		pc := piece{dst: dst, m: m, seg: s}
		if s.jf != nil {
			s.refs++
			pc.local = true
		}
		pieces = append(pieces, pc)
		return true
	})
	pieces = d.missLocked(pieces, p[pos-off:], pos)
	return pieces, nil
}

func (d *Disk) release(pieces []piece) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, pc := range pieces {
		if pc.local {
			pc.seg.refs--
			d.dropJournalLocked(pc.seg)
		}
	}
}

// readPieces fills every piece: the local ones inline, the remote ones
// on up to pieceWorkers goroutines.
func (d *Disk) readPieces(pieces []piece) error {
	return d.eachPiece(pieces, func(_ int, pc piece) error { return d.readPiece(pc) })
}

// eachPiece calls fn for every piece: for the local ones inline, for the
// others on up to pieceWorkers goroutines when there are several.
func (d *Disk) eachPiece(pieces []piece, fn func(i int, pc piece) error) error {
	var remote []int
	var errs []error
	for i, pc := range pieces {
		if pc.local || len(pieces) == 1 {
			errs = append(errs, fn(i, pc))
		} else {
			remote = append(remote, i)
		}
	}
	if len(remote) == 0 {
		return errors.Join(errs...)
	}
	workers := min(len(remote), pieceWorkers)
	remoteErrs := make([]error, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := next.Add(1) - 1; k < int64(len(remote)); k = next.Add(1) - 1 {
				i := remote[k]
				if err := fn(i, pieces[i]); err != nil && remoteErrs[w] == nil {
					remoteErrs[w] = err
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(append(errs, remoteErrs...)...)
}

// pieceWorkers bounds the goroutines one READ uses for its remote pieces.
const pieceWorkers = 8

func (d *Disk) readPiece(pc piece) error {
	if pc.base {
		return d.readBase(pc)
	}
	if pc.local {
		_, err := pc.seg.jf.f.ReadAt(pc.dst, pc.m.dataOff)
		if err != nil {
			return fmt.Errorf("journal %s: %w", pc.seg.jf.path, err)
		}
		return nil
	}
	if err := d.readRemote(pc.seg, pc.seg.hdrLen+pc.m.dataOff, pc.dst); err != nil {
		return err
	}
	if pc.m.whole {
		return d.checkCRC(pc, crc32c(pc.dst))
	}
	return nil
}

// checkCRC checks got, the CRC of the data of a whole extent pc, against
// the map's.
func (d *Disk) checkCRC(pc piece, got uint32) error {
	if got != pc.m.crc {
		return fmt.Errorf("%s at %d: %w", d.key(logDir, pc.seg.seq), pc.m.dataOff,
			corrupt("data CRC %08x, want %08x", got, pc.m.crc))
	}
	return nil
}

// readRemote reads dst from object offset objOff of segment s through the
// block cache (pinRemote).
func (d *Disk) readRemote(s *segment, objOff int64, dst []byte) error {
	blocks, err := d.pinRemote(s, objOff, int64(len(dst)))
	if err == nil {
		pos := 0
		for _, b := range blocks {
			pos += copy(dst[pos:], blockPart(b, objOff, int64(len(dst))))
		}
	}
	for _, b := range blocks {
		d.cache.release(b)
	}
	return err
}

// pinRemote returns the cache blocks holding the n bytes at object offset
// objOff of segment s, pinned, once they are all filled: blocks already
// cached or being fetched are shared, and when a block is missing, the
// missing blocks of its aligned fetch unit are fetched with it
// (fetchMissing). The caller releases the blocks, also on error.
func (d *Disk) pinRemote(s *segment, objOff, n int64) ([]*block, error) {
	first := objOff / cacheBlock
	last := (objOff + n - 1) / cacheBlock
	blocks := make([]*block, last-first+1)
	var mine []bool // the blocks this call registered and must fetch
	for i := range blocks {
		b, fetch := d.cache.lookup(blockKey{s.seq, first + int64(i)})
		blocks[i] = b
		if fetch {
			if mine == nil {
				mine = make([]bool, len(blocks))
			}
			mine[i] = true
		}
	}
	if mine != nil {
		d.fetchMissing(s, first, blocks, mine)
	}
	for i, b := range blocks {
		<-b.ready
		if b.err != nil {
			return blocks, b.err
		}
		if end := min(objOff+n, (first+int64(i)+1)*cacheBlock); end-(first+int64(i))*cacheBlock > int64(len(b.data)) {
			return blocks, fmt.Errorf("%s: %w", d.key(logDir, s.seq), corrupt("object shorter than its header says"))
		}
	}
	return blocks, nil
}

// blockPart returns the part of filled block b that holds bytes of the n
// at object offset objOff.
func blockPart(b *block, objOff, n int64) []byte {
	bOff := b.key.idx * cacheBlock
	lo := max(objOff, bOff)
	hi := min(objOff+n, bOff+cacheBlock)
	return b.data[lo-bOff : hi-bOff]
}

// fetchUnit is the aligned span of an object a READ's miss fetches: a
// ranged GET costs the store far more than its bytes (versitygw allocates
// a 1 MiB buffer for each), so a random READ brings the blocks around its
// own into the cache in the same request, where the next READs of that
// span find them while the cache's speculative share holds them. Larger
// units cost more per GET than they save in GETs (docs/s3.md).
const fetchUnit = 256 << 10

// fetchMissing fetches the blocks of s that readRemote registered
// (blocks[i] where mine[i], blocks[0] being block first), with the other
// blocks of their fetch units that are neither cached nor being fetched,
// within the segment's data, in one GET of up to maxRun blocks: blocks
// between them that are cached or in flight already are fetched again and
// dropped, since a GET costs the store far more than the bytes of a few
// blocks. The other blocks go to the cache's speculative list (demote),
// which a full cache empties first.
func (d *Disk) fetchMissing(s *segment, first int64, blocks []*block, mine []bool) {
	const unit = fetchUnit / cacheBlock
	lo := max((first/unit)*unit, s.hdrLen/cacheBlock)
	hi := min((first+int64(len(blocks))+unit-1)/unit*unit, (s.hdrLen+s.dataLen+cacheBlock-1)/cacheBlock)
	hi = max(hi, first+int64(len(blocks))) // never fewer than the READ's own
	var extra []*block                     // pinned by tryLookup here
	var run []*block                       // nil: a block someone else has
	fetch := func() {
		for len(run) > 0 && run[len(run)-1] == nil {
			run = run[:len(run)-1]
		}
		if len(run) > 0 {
			d.fetchBlocks(s, run)
		}
		run = nil
	}
	for idx := lo; idx < hi; idx++ {
		var b *block
		if i := idx - first; i >= 0 && i < int64(len(blocks)) {
			if mine[i] {
				b = blocks[i]
			}
		} else if b = d.cache.tryLookup(blockKey{s.seq, idx}); b != nil {
			extra = append(extra, b)
		}
		if len(run) == maxRun {
			fetch()
		}
		if b != nil || len(run) > 0 {
			run = append(run, b)
		}
	}
	fetch()
	for _, b := range extra {
		d.cache.demote(b)
		d.cache.release(b)
	}
}

// readTimeout bounds the retries of one GET.
const readTimeout = 30 * time.Second

// fetchBlocks fetches up to maxRun consecutive blocks of s with one
// ranged GET, on a GET worker, and fills them. A nil block is one the
// caller does not fetch (it is cached or in flight): its bytes are read
// and dropped. The first and the last are never nil.
func (d *Disk) fetchBlocks(s *segment, blocks []*block) {
	d.onGetWorker(func() { d.getBlocks(s, blocks) })
}

// getJob is a GET for a getWorker to run.
type getJob struct {
	fn   func()
	done chan struct{}
}

// onGetWorker runs fn, a GET of the read path, on one of Config.Reads
// long-lived goroutines, waiting for one to be free. That bounds the GETs
// at once, and runs the SDK's deep request pipeline on a stack that has
// grown already: on the fresh goroutine of each READ, the stack grew by
// copying, several times per GET (17 % of nbdd's CPU in 4 KiB random
// reads). The workers start with the first GET and end with the Disk.
func (d *Disk) onGetWorker(fn func()) {
	d.getOnce.Do(func() {
		d.getJobs = make(chan getJob)
		for range d.cfg.reads() {
			go d.getWorker()
		}
	})
	job := getJob{fn: fn, done: make(chan struct{})}
	select {
	case d.getJobs <- job:
		<-job.done
	case <-d.ctx.Done():
		fn() // closing: the GET fails at once on the cancelled context
	}
}

func (d *Disk) getWorker() {
	for {
		select {
		case job := <-d.getJobs:
			job.fn()
			close(job.done)
		case <-d.ctx.Done():
			return
		}
	}
}

// getBlocks is fetchBlocks on the worker.
func (d *Disk) getBlocks(s *segment, blocks []*block) {
	start := blocks[0].key.idx * cacheBlock
	end := min((blocks[len(blocks)-1].key.idx+1)*cacheBlock, s.hdrLen+s.dataLen)
	if vr, ok := d.store.(VectorReader); ok || len(blocks) == 1 {
		// straight into the blocks' buffers
		sizes := make([]int, len(blocks))
		var drop []byte
		for i, b := range blocks {
			lo := start + int64(i)*cacheBlock
			sizes[i] = int(max(min(lo+cacheBlock, end)-lo, 0))
			if b == nil && drop == nil {
				dp := dropBuffers.Get().(*[]byte)
				defer dropBuffers.Put(dp)
				drop = *dp
			}
		}
		bufs := d.cache.buffers(make([][]byte, 0, len(blocks)), blocks, sizes, drop)
		err := d.getv(vr, d.key(logDir, s.seq), bufs, start)
		for _, b := range blocks {
			if b != nil {
				d.cache.fill(b, nil, err)
			}
		}
		return
	}
	bp := runBuffers.Get().(*[]byte)
	defer runBuffers.Put(bp)
	buf := (*bp)[:max(end-start, 0)]
	err := d.get(d.key(logDir, s.seq), buf, start)
	for i, b := range blocks {
		lo := min(int64(i)*cacheBlock, int64(len(buf)))
		hi := min(lo+cacheBlock, int64(len(buf)))
		if b != nil {
			d.cache.fill(b, buf[lo:hi], err)
		}
	}
}

// getObject is a GET of the whole object of s on a GET worker, into the
// buffers of blocks, which start at its first block (nil: a block whose
// bytes are dropped); the body goes straight into the cache's arena, as
// getBlocks's does. Stores without WholeReader are not asked (planFetch).
func (d *Disk) getObject(s *segment, blocks []*block) {
	size := s.hdrLen + s.dataLen
	sizes := make([]int, len(blocks))
	var drop []byte
	for i, b := range blocks {
		sizes[i] = int(min(size-int64(i)*cacheBlock, cacheBlock))
		if b == nil && drop == nil {
			dp := dropBuffers.Get().(*[]byte)
			defer dropBuffers.Put(dp)
			drop = *dp
		}
	}
	bufs := d.cache.buffers(make([][]byte, 0, len(blocks)), blocks, sizes, drop)
	err := d.getWhole(d.store.(WholeReader), d.key(logDir, s.seq), bufs)
	for _, b := range blocks {
		if b != nil {
			d.cache.fill(b, nil, err)
		}
	}
}

// getWhole reads the whole object key into bufs, which hold all of it,
// retrying transient failures for up to readTimeout.
func (d *Disk) getWhole(wr WholeReader, key string, bufs [][]byte) error {
	return d.getRetried(key, -1, totalLen(bufs), func(ctx context.Context) (int, error) {
		return wr.ReadWholev(ctx, key, bufs)
	})
}

// get reads len(p) bytes of key at off, retrying transient failures for
// up to readTimeout.
func (d *Disk) get(key string, p []byte, off int64) error {
	return d.getRetried(key, off, len(p), func(ctx context.Context) (int, error) {
		return d.store.ReadAt(ctx, key, p, off)
	})
}

// getv is get into several buffers: with the store's VectorReader when
// it has one (vr), else for a single buffer.
func (d *Disk) getv(vr VectorReader, key string, bufs [][]byte, off int64) error {
	if vr == nil {
		return d.get(key, bufs[0], off)
	}
	return d.getRetried(key, off, totalLen(bufs), func(ctx context.Context) (int, error) {
		return vr.ReadAtv(ctx, key, bufs, off)
	})
}

// getRetried runs read, a GET of want bytes of key at off (-1: the whole
// object), retrying transient failures for up to readTimeout.
// Every attempt is counted in Stats; io.EOF after want bytes is success,
// and fewer bytes without an error are a corrupt object, never zeroes.
func (d *Disk) getRetried(key string, off int64, want int, read func(ctx context.Context) (int, error)) error {
	ctx, cancel := context.WithTimeout(d.ctx, readTimeout)
	defer cancel()
	return d.retry(ctx, "get "+key, func(ctx context.Context) error {
		n, err := read(ctx)
		d.count(func(s *Stats) { s.Gets++; s.GetBytes += int64(n) })
		if errors.Is(err, io.EOF) && n == want {
			err = nil
		}
		if err == nil && n < want {
			err = shortGet(key, n, off, want)
		}
		return err
	})
}

// shortGet is the error of a GET that returned n of want bytes.
func shortGet(key string, n int, off int64, want int) error {
	if off < 0 {
		return corrupt("%s: %d bytes, want %d", key, n, want)
	}
	return corrupt("%s: %d bytes at %d, want %d", key, n, off, want)
}

// totalLen is the bytes bufs hold together.
func totalLen(bufs [][]byte) int {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	return total
}

// readAhead follows up to raStreams sequential readers.
type readAhead struct {
	mu       sync.Mutex
	streams  [raStreams]raStream
	next     int
	inFlight int64 // bytes of prefetches not yet done
}

// raStream is one sequential reader: where its reads end, how far ahead
// of them the cache has been filled, and how many bytes it has read in
// reads that each continued it.
type raStream struct{ end, fetched, run int64 }

const (
	raStreams   = 8
	raTolerance = 4 << 20 // a read this close to a stream's end continues it
	// raMinRun is how much a stream must have read before read-ahead
	// starts: random 4 KiB reads land near some stream's end now and then,
	// and must not each fetch a window.
	raMinRun = 1 << 20
)

// readAheadAt notes a READ of [off, off+n) as it arrives and, when it
// continues a sequential stream, registers the blocks of the window ahead
// of it in the cache and fetches them in the background, in GETs of up to
// maxRun blocks that take whole chunks of a segment (planFetch): the READs
// that follow, this stream's and those of streams whose data lies between
// its extents, find their blocks in flight or cached instead of each
// making a smaller GET. Prefetches in flight hold at most half the cache.
func (d *Disk) readAheadAt(off, n int64) {
	window := d.cfg.readAhead()
	if window <= 0 {
		return
	}
	end := off + n
	r := &d.ra
	r.mu.Lock()
	var s *raStream
	for i := range r.streams {
		if st := &r.streams[i]; st.end != 0 && off <= st.end+raTolerance && off >= st.end-raTolerance {
			s = st
			break
		}
	}
	if s == nil {
		r.streams[r.next] = raStream{end: end, fetched: end, run: n}
		r.next = (r.next + 1) % raStreams
		r.mu.Unlock()
		return
	}
	s.end = max(s.end, end)
	s.run += n
	room := d.cfg.cacheSize()/2 - r.inFlight
	from, to := max(s.fetched, s.end), min(s.end+window, d.meta.Size)
	to = min(to, from+room)
	if s.run < raMinRun || to-from < window/4 {
		r.mu.Unlock()
		return
	}
	s.fetched = to
	r.inFlight += room // held while planning, so no other plan overruns it
	r.mu.Unlock()
	runs, planned := d.planFetch(from, to, room)
	r.mu.Lock()
	r.inFlight += planned - room
	r.mu.Unlock()
	if len(runs) == 0 {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.fetchRuns(runs)
		r.mu.Lock()
		r.inFlight -= planned
		r.mu.Unlock()
	}()
}

// fetchRun is up to maxRun consecutive blocks of one segment, registered
// in the cache and pinned, to be fetched with one GET; or, when object is
// set, the blocks of a whole segment object from its first, nil where
// another fetch has them, to be fetched with one GET of the object.
type fetchRun struct {
	seg    *segment
	blocks []*block
	object bool
}

// chunkFill is how many blocks of a prefetch's range a chunk must hold to
// be fetched whole. A chunk is maxRun blocks of a segment, aligned: what
// one GET takes. Fetched whole, it brings the data of the other ranges
// written at the same time as this one (several sequential writers
// interleave their extents in every segment), which their readers then
// find cached; and since every reader's prefetch cuts a segment at the same
// places, each chunk is fetched once, with one GET, whoever asks first. A
// GET costs the store about what 1 MiB of body does, so a chunk holding
// less of the range is fetched only where it holds the range.
const chunkFill = maxRun / 8

// maxWholeObject bounds the segment objects a prefetch fetches whole.
const maxWholeObject = 64 << 20

// chunkKey names a chunk: blocks idx*maxRun to (idx+1)*maxRun-1 of seg.
type chunkKey struct {
	seg *segment
	idx int64
}

// planFetch registers the blocks holding the stored data of [off, end)
// that are neither cached nor being fetched, in runs for fetchRuns, and
// returns the bytes registered, at most limit. A segment met for the first
// time, holding chunkFill blocks of the range, is registered whole, to be
// fetched with one GET of the object where the store has WholeReader
// (wholeSegment). Elsewhere, chunks holding chunkFill blocks of the range
// are registered whole, and a run goes on across the extents of one
// segment that lie next to each other in it (a write's record header sits
// between them), so data written in small WRITEs is still fetched in
// large GETs.
func (d *Disk) planFetch(off, end, limit int64) ([]fetchRun, int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failed != nil {
		return nil, 0
	}
	order, own := d.rangeBlocks(off, end)
	// Where data is scattered, a chunk holds little of the range: the
	// blocks between the range's are fetched up to three times its size,
	// and those of whole segments up to eight times.
	gaps := 3 * (end - off) / cacheBlock
	segGaps := 8 * (end - off) / cacheBlock
	limit /= cacheBlock
	segOwn := map[*segment]int64{}
	for _, k := range order {
		for _, b := range own[k] {
			if b {
				segOwn[k.seg]++
			}
		}
	}
	var runs []fetchRun
	var planned int64
	done := map[*segment]bool{} // fetched whole by this plan
	for _, k := range order {
		s, bits := k.seg, own[k]
		if done[s] {
			continue
		}
		if n := segOwn[s]; n >= chunkFill && d.wholeSegmentFits(s, min(limit, segGaps+n)) {
			done[s] = true
			got, segRuns := d.wholeSegment(s)
			runs = append(runs, segRuns...)
			planned += got * cacheBlock
			limit -= got
			segGaps -= max(got-n, 0)
			continue
		}
		first := max(k.idx*maxRun, s.hdrLen/cacheBlock)
		last := min((k.idx+1)*maxRun, (s.hdrLen+s.dataLen+cacheBlock-1)/cacheBlock)
		n := int64(0)
		for _, b := range bits {
			if b {
				n++
			}
		}
		whole := n >= chunkFill && last-first-n <= gaps
		if whole {
			gaps -= last - first - n
		}
		cur := fetchRun{seg: s}
		flush := func() {
			if len(cur.blocks) > 0 {
				runs = append(runs, cur)
			}
			cur = fetchRun{seg: s}
		}
		for idx := first; idx < last && limit > 0; idx++ {
			if !whole && !bits[idx%maxRun] {
				flush()
				continue
			}
			b := d.cache.tryLookup(blockKey{s.seq, idx})
			if b == nil {
				flush()
				continue
			}
			cur.blocks = append(cur.blocks, b)
			planned += cacheBlock
			limit--
		}
		flush()
		if limit <= 0 {
			break
		}
	}
	return runs, planned
}

// wholeSegmentFits reports whether segment s may be fetched whole within
// room blocks: the store reads whole objects, s is small enough, and no
// block of its data is cached or being fetched yet (the first reader to
// reach it fetches it; every later one finds its blocks). d.mu is held.
func (d *Disk) wholeSegmentFits(s *segment, room int64) bool {
	if _, ok := d.store.(WholeReader); !ok {
		return false
	}
	first := s.hdrLen / cacheBlock
	last := (s.hdrLen + s.dataLen + cacheBlock - 1) / cacheBlock
	if s.hdrLen+s.dataLen > maxWholeObject || last-first > room {
		return false
	}
	return !d.cache.anyCached(s.seq, first, last)
}

// wholeSegment registers the blocks of s's data that are neither cached
// nor being fetched, and returns how many, and the run to fetch them: one
// run of the whole object from its first block, nil where a block holds
// only header or another fetch has it. A stored segment is immutable, so
// reading it whole is reading what its blocks hold. d.mu is held.
func (d *Disk) wholeSegment(s *segment) (int64, []fetchRun) {
	first := s.hdrLen / cacheBlock
	last := (s.hdrLen + s.dataLen + cacheBlock - 1) / cacheBlock
	blocks := make([]*block, last)
	got := int64(0)
	for idx := first; idx < last; idx++ {
		if b := d.cache.tryLookup(blockKey{s.seq, idx}); b != nil {
			blocks[idx] = b
			got++
		}
	}
	if got == 0 {
		return 0, nil
	}
	return got, []fetchRun{{seg: s, blocks: blocks, object: true}}
}

// rangeBlocks returns the chunks of stored segments holding data of
// [off, end), in the order met, and which of their blocks hold it. Where
// data is scattered over many segments, a block holds little of the
// range: it stops at twice the range's size in blocks. d.mu is held.
func (d *Disk) rangeBlocks(off, end int64) ([]chunkKey, map[chunkKey]*[maxRun]bool) {
	var order []chunkKey
	own := map[chunkKey]*[maxRun]bool{}
	budget := 2 * (end - off) / cacheBlock
	d.m.each(off, end, func(m mapping) bool {
		s := d.segs[m.seg]
		if m.kind != kindData || s.jf != nil || s.hdrLen == 0 {
			return true
		}
		lo, hi := s.hdrLen+m.dataOff, s.hdrLen+m.dataOff+m.len
		for idx := lo / cacheBlock; idx*cacheBlock < hi; idx++ {
			k := chunkKey{s, idx / maxRun}
			bits := own[k]
			if bits == nil {
				bits = new([maxRun]bool)
				own[k] = bits
				order = append(order, k)
			}
			if !bits[idx%maxRun] {
				bits[idx%maxRun] = true
				budget--
			}
		}
		return budget > 0
	})
	return order, own
}

// fetchRuns fetches runs planned by planFetch, each with one GET, as
// many at once as the GET limit allows, and unpins their blocks.
func (d *Disk) fetchRuns(runs []fetchRun) {
	var wg sync.WaitGroup
	for _, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if run.object {
				d.onGetWorker(func() { d.getObject(run.seg, run.blocks) })
			} else {
				d.fetchBlocks(run.seg, run.blocks)
			}
			for _, b := range run.blocks {
				if b != nil {
					d.cache.release(b)
				}
			}
		}()
	}
	wg.Wait()
}

// Cache implements backend.Cacher (NBD_CMD_CACHE): the range is fetched
// into the read cache.
func (d *Disk) Cache(off, length int64) error {
	if err := d.checkRange(off, length); err != nil {
		return err
	}
	runs, _ := d.planFetch(off, off+length, d.cfg.cacheSize())
	d.fetchRuns(runs)
	return d.cacheBase(off, off+length)
}

// Extents implements backend.Extenter from the map: data extents are
// allocated, zero extents read as zeroes, holes and ranges never written
// are holes that read as zeroes.
func (d *Disk) Extents(off, length int64, fn func(backend.Extent) bool) error {
	if err := d.checkRange(off, length); err != nil {
		return err
	}
	var exts []backend.Extent
	add := func(o, n int64, f backend.ExtentFlags) {
		if k := len(exts) - 1; k >= 0 && exts[k].Flags == f && exts[k].Offset+exts[k].Length == o {
			exts[k].Length += n
			return
		}
		exts = append(exts, backend.Extent{Offset: o, Length: n, Flags: f})
	}
	end := off + length
	pos := off
	d.mu.Lock()
	d.m.each(off, end, func(m mapping) bool {
		if m.off > pos {
			add(pos, m.off-pos, d.gapFlags())
		}
		switch m.kind {
		case kindData:
			add(m.off, m.len, 0)
		case kindZero:
			add(m.off, m.len, backend.ExtentZero)
		default:
			add(m.off, m.len, backend.ExtentHole|backend.ExtentZero)
		}
		pos = m.end()
		return len(exts) < 1<<16
	})
	d.mu.Unlock()
	if pos < end && len(exts) < 1<<16 {
		add(pos, end-pos, d.gapFlags())
	}
	return d.emitExtents(exts, fn)
}
