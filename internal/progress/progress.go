// Package progress draws the progress of long image commands (import,
// export, flatten, gc) on a terminal, in the manner of qemu-img convert -p:
// one line, redrawn in place, at most a few times a second.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// redrawEvery bounds how often the line is redrawn.
const redrawEvery = 200 * time.Millisecond

// A Bar reports how many of Total bytes are done. Its methods are safe for
// concurrent use. A Bar whose writer is not a terminal draws nothing until
// Done, which prints one summary line, so logs and pipes stay clean.
type Bar struct {
	w     io.Writer
	label string
	total int64
	tty   bool
	start time.Time

	mu   sync.Mutex
	done int64
	last time.Time // of the last redraw
}

// New returns a bar for a task of total bytes, drawn on w (normally
// os.Stderr). A nil w draws nothing at all.
func New(w io.Writer, label string, total int64) *Bar {
	return &Bar{w: w, label: label, total: total, tty: isTerminal(w), start: time.Now()}
}

// Add records n more bytes done.
func (b *Bar) Add(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done += n
	if !b.tty || b.w == nil {
		return
	}
	if now := time.Now(); now.Sub(b.last) >= redrawEvery || b.done >= b.total {
		b.last = now
		fmt.Fprintf(b.w, "\r%s", b.line(now))
	}
}

// Done ends the bar with a summary line.
func (b *Bar) Done() {
	if b == nil || b.w == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	prefix := ""
	if b.tty {
		prefix = "\r"
	}
	fmt.Fprintf(b.w, "%s%s\n", prefix, b.line(time.Now()))
}

// line renders "LABEL  37.5% 384.0 MiB of 1.0 GiB, 210.3 MiB/s".
func (b *Bar) line(now time.Time) string {
	pct := 100.0
	if b.total > 0 {
		pct = 100 * float64(b.done) / float64(b.total)
	}
	rate := 0.0
	if el := now.Sub(b.start).Seconds(); el > 0 {
		rate = float64(b.done) / el
	}
	return fmt.Sprintf("%s %5.1f%% %s of %s, %s/s", b.label, pct, Size(b.done), Size(b.total), Size(int64(rate)))
}

// Size formats n bytes in binary units ("1.5 GiB").
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
