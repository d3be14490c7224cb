package backend

import (
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckRange(t *testing.T) {
	const max = math.MaxInt64
	tests := []struct {
		off, length, size int64
		ok                bool
	}{
		{0, 0, 0, true},
		{0, 10, 10, true},
		{10, 0, 10, true},
		{9, 1, 10, true},
		{9, 2, 10, false},
		{11, 0, 10, false},
		{-1, 1, 10, false},
		{0, -1, 10, false},
		{max, max, max, false}, // off+length overflows
		{1, max, max, false},
		{max - 1, 1, max, true},
	}
	for _, tt := range tests {
		err := checkRange("op", tt.off, tt.length, tt.size)
		if tt.ok {
			require.NoError(t, err, "%+v", tt)
		} else {
			require.ErrorIs(t, err, ErrOutOfRange, "%+v", tt)
		}
	}
}

func TestReadLimit(t *testing.T) {
	tests := []struct {
		n       int
		off     int64
		want    int
		wantErr bool
	}{
		{10, 0, 10, false},
		{10, 90, 10, false},
		{10, 95, 5, true},
		{10, 100, 0, true},
		{10, 200, 0, true},
		{0, 100, 0, false},
		{10, -1, 0, true},
	}
	for _, tt := range tests {
		got, err := readLimit(tt.n, tt.off, 100)
		require.Equal(t, tt.want, got, "%+v", tt)
		if tt.wantErr {
			require.ErrorIs(t, err, ErrOutOfRange, "%+v", tt)
		} else {
			require.NoError(t, err, "%+v", tt)
		}
		if tt.wantErr && tt.off >= 0 {
			require.ErrorIs(t, err, io.EOF, "%+v", tt)
		}
	}
}

func TestExtentMerger(t *testing.T) {
	var got []Extent
	m := extentMerger{fn: func(e Extent) bool { got = append(got, e); return true }}
	m.add(0, 10, 0)
	m.add(10, 5, 0)
	m.add(15, 0, hz) // empty: ignored
	m.add(15, 5, hz)
	m.add(20, 5, 0)
	m.flush()
	require.Equal(t, []Extent{{0, 15, 0}, {15, 5, hz}, {20, 5, 0}}, got)
}
