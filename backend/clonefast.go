//go:build linux

package backend

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// The accelerators of a Clone: each one routes a range by block state to
// the base or the overlay, as ReadAt and WriteAt do, so none of them
// bypasses the map. A Clone lends no memory (Viewer) and no single file
// (sendfile): a READ's bytes may come from two files and from nowhere.

// NonBlocking reports whether neither the base nor the overlay ever
// waits on a device: a base loaded into memory or on tmpfs, and an
// overlay on tmpfs. The server then runs small requests on the goroutine
// that read them; a copy-up there waits at most for another copy-up of a
// block in memory.
func (c *Clone) NonBlocking() bool { return isNonBlocking(c.base) && isNonBlocking(c.ov) }

func isNonBlocking(b any) bool {
	nb, ok := b.(NonBlocker)
	return ok && nb.NonBlocking()
}

// ReadCached implements CachedReader: it reads all of p at off if no part
// of it needs I/O, asking the base and the overlay each for their blocks
// (File.ReadCached; a base in memory always answers), and reports false,
// having read nothing useful, as soon as one of them would have to wait.
func (c *Clone) ReadCached(p []byte, off int64) bool {
	if len(p) == 0 {
		return false
	}
	if n, _ := readLimit(len(p), off, c.size); n < len(p) {
		return false
	}
	err := c.eachRun(off, off+int64(len(p)), func(s blockState, pos, stop int64) error {
		seg := p[pos-off : stop-off]
		switch {
		case s == stateBase && !readCachedFrom(c.base, seg, pos),
			s == stateData && !readCachedFrom(c.ov, seg, c.dataOff+pos):
			return errStopRuns
		case s == stateZero:
			clear(seg)
		}
		return nil
	})
	return err == nil
}

// readCachedFrom reads p at off from r if that waits on no device: r
// never blocks, or its cached read succeeds.
func readCachedFrom(r io.ReaderAt, p []byte, off int64) bool {
	if isNonBlocking(r) {
		return readFullAt(r, p, off) == nil
	}
	cr, ok := r.(CachedReader)
	return ok && cr.ReadCached(p, off)
}

// CanWriteFromPipe implements PipeWriter: true when the overlay's file
// takes splice(2).
func (c *Clone) CanWriteFromPipe() bool {
	pw, ok := c.ov.(PipeWriter)
	return ok && !c.readOnly && pw.CanWriteFromPipe()
}

// WriteFromPipe implements PipeWriter: the whole blocks of the range go
// from the pipe into the overlay with splice(2) and are then marked as
// data; the partial blocks at its edges are read from the pipe into a
// buffer and written as WriteAt writes them, copying up from the base.
func (c *Clone) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	if err := c.checkWrite("write from pipe", off, int64(n)); err != nil || n == 0 {
		return 0, err
	}
	pw, ok := c.ov.(PipeWriter)
	if !ok {
		return 0, fmt.Errorf("write from pipe: %w", errors.ErrUnsupported)
	}
	end := off + int64(n)
	first, last := off>>c.shift, (end-1)>>c.shift
	lo, hi := first, last+1
	headEnd, tailStart := off, end
	if off > c.blockStart(first) || end < c.blockEnd(first) {
		lo++
		headEnd = min(end, c.blockEnd(first))
	}
	if last > first && end < c.blockEnd(last) {
		hi--
		tailStart = c.blockStart(last)
	}
	done, err := c.writeFromPipeBuffered(pipe, off, headEnd-off)
	if err != nil {
		return done, err
	}
	if lo < hi {
		start := c.blockStart(lo)
		m, err := pw.WriteFromPipe(pipe, c.dataOff+start, int(c.blockEnd(hi-1)-start))
		done += m
		if m == int(c.blockEnd(hi-1)-start) {
			c.publish(lo, hi)
		} else if whole := int64(m) >> c.shift; whole > 0 {
			c.publish(lo, lo+whole)
		}
		if err != nil {
			return done, fmt.Errorf("clone write at %d: %w", start, err)
		}
	}
	if tailStart < end {
		m, err := c.writeFromPipeBuffered(pipe, tailStart, end-tailStart)
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// writeFromPipeBuffered reads n (less than a block) bytes from the pipe
// and writes them at off with the copy-up path. It reports the bytes it
// took from the pipe, even when the write then fails.
func (c *Clone) writeFromPipeBuffered(pipe int, off, n int64) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := (*bp)[:n]
	got := 0
	for got < len(buf) {
		m, err := unix.Read(pipe, buf[got:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return got, fmt.Errorf("read from pipe: %w", err)
		case m == 0:
			return got, fmt.Errorf("read from pipe: %w", io.ErrUnexpectedEOF)
		}
		got += m
	}
	return got, c.write(buf, off)
}
