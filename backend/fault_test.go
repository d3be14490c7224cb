package backend

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFaultRules(t *testing.T) {
	enospc := syscall.ENOSPC
	tests := []struct {
		name    string
		rule    FaultRule
		op      func(b *Fault) (int, error)
		wantN   int
		wantErr error // nil: the request must succeed
	}{
		{"read in range", FaultRule{Op: FaultRead, Offset: 0, Length: 4096}, readAt(100, 10), 0, syscall.EIO},
		{"read overlapping end of range", FaultRule{Op: FaultRead, Offset: 4096, Length: 4096}, readAt(4000, 200), 0, syscall.EIO},
		{"read outside range", FaultRule{Op: FaultRead, Offset: 4096, Length: 4096}, readAt(8192, 10), 10, nil},
		{"read open-ended range", FaultRule{Op: FaultRead, Offset: 4096}, readAt(testSize-1, 1), 0, syscall.EIO},
		{"write is not read", FaultRule{Op: FaultRead}, writeAt(0, 10), 10, nil},
		{"write custom errno", FaultRule{Op: FaultWrite, Err: enospc}, writeAt(0, 10), 0, enospc},
		{"fua write", FaultRule{Op: FaultWrite}, fuaWriteAt(0, 4), 0, syscall.EIO},
		{"fua write, sync rule", FaultRule{Op: FaultSync, Err: enospc}, fuaWriteAt(0, 4), 4, enospc},
		{"fua write, read rule", FaultRule{Op: FaultRead}, fuaWriteAt(0, 4), 4, nil},
		{"short read", FaultRule{Op: FaultRead, ShortRead: true}, readAt(0, 100), 50, syscall.EIO},
		{"short read with delay", FaultRule{Op: FaultRead, ShortRead: true, Delay: time.Millisecond}, readAt(0, 100), 50, syscall.EIO},
		{"short read custom errno", FaultRule{Op: FaultRead, ShortRead: true, Err: enospc}, readAt(0, 100), 50, enospc},
		{"delay only", FaultRule{Op: FaultRead, Delay: time.Millisecond}, readAt(0, 10), 10, nil},
		{"delay and error", FaultRule{Op: FaultRead, Delay: time.Millisecond, Err: enospc}, readAt(0, 10), 0, enospc},
		{"sync ignores range", FaultRule{Op: FaultSync, Offset: 1 << 40}, nErr((*Fault).Sync), 0, syscall.EIO},
		{"trim", FaultRule{Op: FaultTrim, Offset: 10, Length: 1}, nErr(func(b *Fault) error { return b.Trim(0, 11) }), 0, syscall.EIO},
		{"trim before range", FaultRule{Op: FaultTrim, Offset: 10, Length: 1}, nErr(func(b *Fault) error { return b.Trim(0, 10) }), 0, nil},
		{"zero", FaultRule{Op: FaultZero}, nErr(func(b *Fault) error { return b.WriteZeroes(0, 1, true, false) }), 0, syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewFault(NewMemory(testSize), tt.rule)
			n, err := tt.op(b)
			require.Equal(t, tt.wantN, n, "got n")
			if tt.wantErr == nil {
				require.NoError(t, err)
				if tt.rule.Delay == 0 {
					require.Zero(t, b.Total(), "got faults counted for an unmatched request")
				}
				return
			}
			require.ErrorIs(t, err, tt.wantErr)
			require.Equal(t, []int64{1}, b.Injected())
		})
	}
}

func readAt(off int64, n int) func(*Fault) (int, error) {
	return func(b *Fault) (int, error) { return b.ReadAt(make([]byte, n), off) }
}

func writeAt(off int64, n int) func(*Fault) (int, error) {
	return func(b *Fault) (int, error) { return b.WriteAt(make([]byte, n), off) }
}

func fuaWriteAt(off int64, n int) func(*Fault) (int, error) {
	return func(b *Fault) (int, error) { return b.WriteAtFUA(make([]byte, n), off) }
}

func nErr(f func(*Fault) error) func(*Fault) (int, error) {
	return func(b *Fault) (int, error) { return 0, f(b) }
}

func TestFaultFirstRuleWins(t *testing.T) {
	b := NewFault(NewMemory(testSize),
		FaultRule{Op: FaultWrite, Offset: 0, Length: 10, Err: syscall.EPERM},
		FaultRule{Op: FaultWrite})
	_, err := b.WriteAt([]byte{1}, 0)
	require.ErrorIs(t, err, syscall.EPERM)
	_, err = b.WriteAt([]byte{1}, 20)
	require.ErrorIs(t, err, syscall.EIO)
	_, err = b.WriteAt([]byte{1}, 30)
	require.ErrorIs(t, err, syscall.EIO)
	require.Equal(t, []int64{1, 2}, b.Injected())
	require.Equal(t, int64(3), b.Total())
}

func TestFaultNonBlocking(t *testing.T) {
	require.True(t, NewFault(NewMemory(1), FaultRule{Op: FaultRead}).NonBlocking())
	require.False(t, NewFault(NewMemory(1), FaultRule{Op: FaultRead, Delay: time.Second}).NonBlocking(),
		"a delaying rule blocks")
	require.False(t, NewFault(newBare(1)).NonBlocking(), "wrapped backend may block")
}

func TestParseFaultSpec(t *testing.T) {
	tests := []struct {
		spec string
		want []FaultRule
	}{
		{"", nil},
		{"  ", nil},
		{"read:0-4096:eio,write:1M-2M:delay=500ms", []FaultRule{
			{Op: FaultRead, Offset: 0, Length: 4096, Err: syscall.EIO},
			{Op: FaultWrite, Offset: 1 << 20, Length: 1 << 20, Delay: 500 * time.Millisecond},
		}},
		{"sync", []FaultRule{{Op: FaultSync}}},
		{"sync:enospc", []FaultRule{{Op: FaultSync, Err: syscall.ENOSPC}}},
		{"trim:*:eperm", []FaultRule{{Op: FaultTrim, Err: syscall.EPERM}}},
		{"zero:4K-", []FaultRule{{Op: FaultZero, Offset: 4096}}},
		{"read:1G-2G:short:delay=1s", []FaultRule{{Op: FaultRead, Offset: 1 << 30, Length: 1 << 30, ShortRead: true, Delay: time.Second}}},
		{" read:0-1T:erofs , write ", []FaultRule{
			{Op: FaultRead, Length: 1 << 40, Err: syscall.EROFS},
			{Op: FaultWrite},
		}},
	}
	for _, tt := range tests {
		got, err := ParseFaultSpec(tt.spec)
		require.NoError(t, err, "spec %q", tt.spec)
		require.Equal(t, tt.want, got, "spec %q", tt.spec)
	}
}

func TestParseFaultSpecErrors(t *testing.T) {
	for _, spec := range []string{
		"bogus",
		"read:0-4096:ebogus",
		"read:4096-0",
		"read:10-10",
		"read:5",
		"read:-5-10",
		"read:0-99999999999T",
		"read:x-1",
		"write:short",
		"read:delay=-1s",
		"read:delay=soon",
		"read,",
		"read::eio",
	} {
		_, err := ParseFaultSpec(spec)
		require.ErrorIs(t, err, errFaultSpec, "spec %q: want an error", spec)
	}
}

func TestFaultRuleString(t *testing.T) {
	r := FaultRule{Op: FaultRead, Offset: 4096, Length: 4096, Err: syscall.ENOSPC, ShortRead: true, Delay: time.Second}
	require.Equal(t, "read:4096-8192:enospc:short:delay=1s", r.String())
	require.Equal(t, "write:10-", FaultRule{Op: FaultWrite, Offset: 10}.String())
	require.Equal(t, "sync:err(boom)", FaultRule{Op: FaultSync, Err: errors.New("boom")}.String())
	require.Equal(t, "FaultOp(9)", FaultOp(9).String())
}

// FuzzParseFaultSpec checks that the parser never panics and that what it
// accepts survives a round trip through FaultRule.String.
func FuzzParseFaultSpec(f *testing.F) {
	for _, s := range []string{
		"read:0-4096:eio,write:1M-2M:delay=500ms",
		"sync:enospc", "zero:4K-:short", "trim:*", "read:1G-2G:short:delay=1s", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		rules, err := ParseFaultSpec(spec)
		if err != nil {
			return
		}
		parts := make([]string, len(rules))
		for i, r := range rules {
			require.GreaterOrEqual(t, r.Offset, int64(0))
			require.GreaterOrEqual(t, r.Length, int64(0))
			parts[i] = r.String()
		}
		again, err := ParseFaultSpec(strings.Join(parts, ","))
		require.NoError(t, err, "reparse of %q", parts)
		require.Equal(t, rules, again)
	})
}
