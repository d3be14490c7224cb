package backend

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// bitsOf lists the set blocks of b.
func bitsOf(b bitmap, n int64) []int64 {
	var got []int64
	for i := range n {
		if b.get(i) {
			got = append(got, i)
		}
	}
	return got
}

func TestBitmapDrain(t *testing.T) {
	tests := []struct {
		name   string
		set    [][2]int64
		maxRun int64
		want   []blockRun
	}{
		{"empty", nil, 4, nil},
		{"one run across words", [][2]int64{{60, 70}}, 100, []blockRun{{60, 70}}},
		{"split at maxRun", [][2]int64{{0, 10}}, 4, []blockRun{{0, 4}, {4, 8}, {8, 10}}},
		{"separate runs", [][2]int64{{1, 3}, {5, 6}, {127, 130}}, 100, []blockRun{{1, 3}, {5, 6}, {127, 130}}},
	}
	for _, tt := range tests {
		b := newBitmap(200)
		for _, r := range tt.set {
			b.set(r[0], r[1])
		}
		var got []blockRun
		require.NoError(t, b.drain(tt.maxRun, func(r blockRun) error { got = append(got, r); return nil }), tt.name)
		require.Equal(t, tt.want, got, tt.name)
		require.Empty(t, bitsOf(b, 200), "%s: bits left after drain", tt.name)
	}
}

// TestBitmapDrainError checks that a failed write-back leaves the failed
// run and everything after it set, so the next Sync retries them.
func TestBitmapDrainError(t *testing.T) {
	b := newBitmap(200)
	b.set(1, 3)
	b.set(10, 12)
	b.set(70, 71)
	b.set(150, 151)
	boom := errors.New("boom")
	calls := 0
	err := b.drain(100, func(r blockRun) error {
		calls++
		if calls == 2 {
			return boom
		}
		return nil
	})
	require.ErrorIs(t, err, boom)
	require.Equal(t, []int64{10, 11, 70, 150}, bitsOf(b, 200))

	b.unset(0, 200)
	require.Empty(t, bitsOf(b, 200))
}
