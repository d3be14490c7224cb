package backend

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
)

// FaultOp is the kind of request a FaultRule applies to.
type FaultOp uint8

// Operations a FaultRule can match.
const (
	FaultRead  FaultOp = iota // ReadAt
	FaultWrite                // WriteAt and WriteAtFUA
	FaultSync                 // Sync (the range is ignored)
	FaultTrim                 // Trim
	FaultZero                 // WriteZeroes
)

var faultOpNames = [...]string{"read", "write", "sync", "trim", "zero"}

// String returns the name used in fault specs ("read", "write", ...).
func (op FaultOp) String() string {
	if int(op) < len(faultOpNames) {
		return faultOpNames[op]
	}
	return fmt.Sprintf("FaultOp(%d)", uint8(op))
}

// FaultRule describes one fault. It matches requests of kind Op that
// overlap [Offset, Offset+Length); a Length of 0 means up to the end of the
// export. Sync rules match every Sync.
//
// A matching request first sleeps for Delay. With ShortRead (reads only) it
// then reads the first half of the buffer and returns that count with the
// error, to test callers' handling of n < len(p). Otherwise it fails with
// the error and transfers nothing. The error is Err; a nil Err means
// syscall.EIO (rather than io.ErrUnexpectedEOF, which servers take for a
// closed connection), except in a rule that only delays (Delay > 0 and no
// ShortRead), which lets the request proceed.
type FaultRule struct {
	Op        FaultOp
	Offset    int64
	Length    int64
	Err       error
	ShortRead bool
	Delay     time.Duration
}

// matches reports whether r applies to a request of kind op on
// [off, off+length).
func (r *FaultRule) matches(op FaultOp, off, length int64) bool {
	if r.Op != op {
		return false
	}
	if op == FaultSync {
		return true
	}
	if off+length <= r.Offset || length == 0 {
		return false
	}
	return r.Length == 0 || off < r.Offset+r.Length
}

// err returns the error the rule injects, nil for a delay-only rule.
func (r *FaultRule) err() error {
	switch {
	case r.Err != nil:
		return r.Err
	case r.Delay > 0 && !r.ShortRead:
		return nil
	}
	return syscall.EIO
}

// Fault is a Backend decorator that injects errors, short reads and delays
// into chosen requests, for testing how the server and clients cope. It is
// a Decorator: it passes the capabilities of the wrapped backend through
// and advertises only those. Rules are fixed at construction; Fault is
// safe for concurrent use.
type Fault struct {
	wrapper
	rules []FaultRule
	hits  []atomic.Int64 // hits[i] counts faults injected by rules[i]
}

// NewFault returns b with rules applied. The first matching rule wins.
func NewFault(b Backend, rules ...FaultRule) *Fault {
	return &Fault{
		wrapper: wrapper{b},
		rules:   append([]FaultRule(nil), rules...),
		hits:    make([]atomic.Int64, len(rules)),
	}
}

// NonBlocking reports whether the wrapped backend never blocks and no rule
// delays: a delayed request must not stall the requests behind it.
func (f *Fault) NonBlocking() bool {
	for _, r := range f.rules {
		if r.Delay > 0 {
			return false
		}
	}
	return f.wrapper.NonBlocking()
}

// Injected returns how many requests each rule has affected, indexed like
// the rules given to NewFault.
func (f *Fault) Injected() []int64 {
	n := make([]int64, len(f.hits))
	for i := range f.hits {
		n[i] = f.hits[i].Load()
	}
	return n
}

// Total returns how many requests all rules together have affected.
func (f *Fault) Total() int64 {
	var t int64
	for i := range f.hits {
		t += f.hits[i].Load()
	}
	return t
}

// inject finds the first rule matching the request, counts it, sleeps for
// its delay and returns it, or returns nil if no rule matches.
func (f *Fault) inject(op FaultOp, off, length int64) *FaultRule {
	for i := range f.rules {
		r := &f.rules[i]
		if !r.matches(op, off, length) {
			continue
		}
		f.hits[i].Add(1)
		if r.Delay > 0 {
			time.Sleep(r.Delay)
		}
		return r
	}
	return nil
}

// check runs inject for a request that has no partial outcome.
func (f *Fault) check(op FaultOp, off, length int64) error {
	if r := f.inject(op, off, length); r != nil {
		if err := r.err(); err != nil {
			return fmt.Errorf("injected %v fault at offset %d: %w", op, off, err)
		}
	}
	return nil
}

// ReadAt reads from the wrapped backend unless a read rule matches.
func (f *Fault) ReadAt(p []byte, off int64) (int, error) {
	r := f.inject(FaultRead, off, int64(len(p)))
	if r == nil {
		return f.Backend.ReadAt(p, off)
	}
	err := r.err()
	if err == nil {
		return f.Backend.ReadAt(p, off)
	}
	n := 0
	if r.ShortRead {
		n, _ = f.Backend.ReadAt(p[:len(p)/2], off)
	}
	return n, fmt.Errorf("injected read fault at offset %d: %w", off, err)
}

// WriteAt writes to the wrapped backend unless a write rule matches.
func (f *Fault) WriteAt(p []byte, off int64) (int, error) {
	if err := f.check(FaultWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.Backend.WriteAt(p, off)
}

// WriteAtFUA is WriteAt with forced unit access. Write rules apply to the
// write and sync rules to the flush that FUA implies: a matching sync rule
// fails the call after the data was written, as a failed flush would.
func (f *Fault) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := f.check(FaultWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	fw, native := f.Backend.(FUAWriter)
	var n int
	var err error
	if native {
		n, err = fw.WriteAtFUA(p, off)
	} else {
		n, err = f.Backend.WriteAt(p, off)
	}
	if err != nil {
		return n, err
	}
	if err := f.check(FaultSync, 0, 0); err != nil {
		return n, err
	}
	if native {
		return n, nil
	}
	return n, f.Backend.Sync()
}

// Sync syncs the wrapped backend unless a sync rule matches.
func (f *Fault) Sync() error {
	if err := f.check(FaultSync, 0, 0); err != nil {
		return err
	}
	return f.Backend.Sync()
}

// Trim trims the wrapped backend unless a trim rule matches.
func (f *Fault) Trim(off, length int64) error {
	if err := f.check(FaultTrim, off, length); err != nil {
		return err
	}
	return f.wrapper.Trim(off, length)
}

// WriteZeroes zeroes through the wrapped backend unless a zero rule
// matches.
func (f *Fault) WriteZeroes(off, length int64, noHole, fast bool) error {
	if err := f.check(FaultZero, off, length); err != nil {
		return err
	}
	return f.wrapper.WriteZeroes(off, length, noHole, fast)
}

// Extents reports the wrapped backend's extents, except that ranges a read
// rule covers are reported as data: a hole there would let a reader skip
// the ReadAt that is meant to fail (the server answers known holes without
// reading them).
func (f *Fault) Extents(off, length int64, fn func(Extent) bool) error {
	var faulty []FaultRule
	for _, r := range f.rules {
		if r.Op == FaultRead && r.matches(FaultRead, off, length) {
			faulty = append(faulty, r)
		}
	}
	if len(faulty) == 0 {
		return f.wrapper.Extents(off, length, fn)
	}
	return f.wrapper.Extents(off, length, func(e Extent) bool {
		for _, r := range faulty {
			if r.matches(FaultRead, e.Offset, e.Length) {
				e.Flags = 0
			}
		}
		return fn(e)
	})
}
