package backend

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// errnoNames are the errors a fault spec can name.
var errnoNames = map[string]syscall.Errno{
	"eio":       syscall.EIO,
	"eperm":     syscall.EPERM,
	"enomem":    syscall.ENOMEM,
	"einval":    syscall.EINVAL,
	"enospc":    syscall.ENOSPC,
	"erofs":     syscall.EROFS,
	"edquot":    syscall.EDQUOT,
	"efbig":     syscall.EFBIG,
	"enotsup":   syscall.ENOTSUP,
	"eshutdown": syscall.ESHUTDOWN,
}

// errFaultSpec is wrapped by every ParseFaultSpec error.
var errFaultSpec = errors.New("bad fault spec")

// ParseFaultSpec parses a compact list of fault rules, as given to the
// CLI's --fault flag (NBDD_FAULT):
//
//	spec   = rule *("," rule)
//	rule   = op [":" range] *(":" action)
//	op     = "read" | "write" | "sync" | "trim" | "zero"
//	range  = "*" | size "-" [size]      start, then exclusive end; no end means to the end
//	size   = digits ["K" | "M" | "G" | "T"]   binary multiples (1K = 1024)
//	action = errno | "short" | "delay=" duration
//	errno  = "eio" | "eperm" | "enomem" | "einval" | "enospc" | "erofs" |
//	         "edquot" | "efbig" | "enotsup" | "eshutdown"
//
// A missing range means the whole export; duration is in time.ParseDuration
// syntax. A rule without an errno fails with EIO unless it has a delay or
// "short" (see FaultRule). For example
//
//	read:0-4096:eio,write:1M-2M:delay=500ms,sync:enospc
//
// fails reads of the first 4 KiB with EIO, delays writes touching the
// second MiB by half a second and fails every flush with ENOSPC. An empty
// spec yields no rules.
func ParseFaultSpec(spec string) ([]FaultRule, error) {
	var rules []FaultRule
	if strings.TrimSpace(spec) == "" {
		return nil, nil
	}
	for s := range strings.SplitSeq(spec, ",") {
		r, err := parseFaultRule(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", errFaultSpec, s, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// parseFaultRule parses one rule of a fault spec.
func parseFaultRule(s string) (FaultRule, error) {
	fields := strings.Split(s, ":")
	var r FaultRule
	op, err := parseFaultOp(fields[0])
	if err != nil {
		return r, err
	}
	r.Op = op
	fields = fields[1:]
	if len(fields) > 0 && fields[0] != "" && (fields[0] == "*" || isDigit(fields[0][0])) {
		if r.Offset, r.Length, err = parseFaultRange(fields[0]); err != nil {
			return r, err
		}
		fields = fields[1:]
	}
	for _, a := range fields {
		if err := r.parseAction(a); err != nil {
			return r, err
		}
	}
	return r, nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseFaultOp parses an op name.
func parseFaultOp(s string) (FaultOp, error) {
	for i, name := range faultOpNames {
		if s == name {
			return FaultOp(i), nil
		}
	}
	return 0, fmt.Errorf("unknown op %q", s)
}

// parseFaultRange parses "*", "start-" or "start-end" into an offset and a
// length (0 for open-ended).
func parseFaultRange(s string) (off, length int64, err error) {
	if s == "*" {
		return 0, 0, nil
	}
	start, end, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("range %q: want start-end", s)
	}
	if off, err = parseSize(start); err != nil {
		return 0, 0, err
	}
	if end == "" {
		return off, 0, nil
	}
	e, err := parseSize(end)
	if err != nil {
		return 0, 0, err
	}
	if e <= off {
		return 0, 0, fmt.Errorf("range %q: end not after start", s)
	}
	return off, e - off, nil
}

// parseSize parses a decimal byte count with an optional K, M, G or T
// suffix (powers of 1024).
func parseSize(s string) (int64, error) {
	shift := 0
	if n := len(s); n > 0 {
		if i := strings.IndexByte("KMGT", s[n-1]); i >= 0 {
			shift = 10 * (i + 1)
			s = s[:n-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q: want a non-negative byte count", s)
	}
	return n << shift, nil
}

// parseAction applies one action of a rule to r.
func (r *FaultRule) parseAction(a string) error {
	if e, ok := errnoNames[a]; ok {
		r.Err = e
		return nil
	}
	if a == "short" {
		if r.Op != FaultRead {
			return fmt.Errorf("short applies to read rules only")
		}
		r.ShortRead = true
		return nil
	}
	if d, ok := strings.CutPrefix(a, "delay="); ok {
		delay, err := time.ParseDuration(d)
		if err != nil || delay <= 0 {
			return fmt.Errorf("delay %q: want a positive duration", d)
		}
		r.Delay = delay
		return nil
	}
	return fmt.Errorf("unknown action %q", a)
}

// String formats r in ParseFaultSpec syntax, with byte counts in decimal.
// An Err that is not one of the errnos the syntax names is written as
// "err(message)", which ParseFaultSpec rejects.
func (r FaultRule) String() string {
	var b strings.Builder
	b.WriteString(r.Op.String())
	switch {
	case r.Length > 0:
		fmt.Fprintf(&b, ":%d-%d", r.Offset, r.Offset+r.Length)
	case r.Offset > 0:
		fmt.Fprintf(&b, ":%d-", r.Offset)
	}
	if r.Err != nil {
		b.WriteString(":" + errnoName(r.Err))
	}
	if r.ShortRead {
		b.WriteString(":short")
	}
	if r.Delay > 0 {
		b.WriteString(":delay=" + r.Delay.String())
	}
	return b.String()
}

// errnoName returns the spec name of err, or "err(message)".
func errnoName(err error) string {
	for name, e := range errnoNames {
		if errors.Is(err, e) {
			return name
		}
	}
	return "err(" + err.Error() + ")"
}
