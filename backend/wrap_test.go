package backend

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// newBare returns a Backend with no optional capabilities, to test the
// defaults of the decorators.
func newBare(size int64) Backend { return struct{ Backend }{NewMemory(size)} }

// blockSized is a Backend that reports a minimum block size.
type blockSized struct{ *Memory }

func (blockSized) MinBlockSize() uint32 { return 512 }

func TestReadOnly(t *testing.T) {
	m := NewMemory(testSize)
	_, err := m.WriteAt([]byte("data"), 10)
	require.NoError(t, err)
	b := ReadOnly(m)
	require.Equal(t, b, ReadOnly(b), "ReadOnly of ReadOnly: want the same wrapper")

	got := make([]byte, 4)
	_, err = b.ReadAt(got, 10)
	require.NoError(t, err)
	require.Equal(t, "data", string(got))
	require.NoError(t, b.Sync())

	writes := map[string]func() error{
		"WriteAt":     func() error { _, err := b.WriteAt(got, 0); return err },
		"WriteAtFUA":  func() error { _, err := b.(FUAWriter).WriteAtFUA(got, 0); return err },
		"Trim":        func() error { return b.(Trimmer).Trim(0, 10) },
		"WriteZeroes": func() error { return b.(Zeroer).WriteZeroes(0, 10, false, true) },
	}
	for name, w := range writes {
		require.ErrorIs(t, w(), ErrReadOnly, name)
	}
	require.Equal(t, readAll(t, m), readAll(t, b))
	require.True(t, b.(ReadOnlyer).ReadOnly())
	require.False(t, b.(FastZeroer).CanFastZero())
}

// TestWrapperPassThrough checks that decorators forward the capabilities of
// the wrapped backend and fall back to safe defaults without them.
func TestWrapperPassThrough(t *testing.T) {
	decorators := map[string]func(Backend) Backend{
		"ReadOnly": ReadOnly,
		"Fault":    func(b Backend) Backend { return NewFault(b) },
	}
	for name, wrap := range decorators {
		t.Run(name, func(t *testing.T) {
			m := NewMemory(4 * chunkSize)
			m.WriteAt([]byte{1}, chunkSize)
			b := wrap(m)
			require.Equal(t, collectExtents(t, m, 0, 4*chunkSize), collectExtents(t, b.(Extenter), 0, 4*chunkSize))
			require.True(t, b.(MultiConner).CanMultiConn())
			require.Equal(t, uint32(1), b.(BlockSizer).MinBlockSize())
			require.Equal(t, uint32(512), wrap(blockSized{m}).(BlockSizer).MinBlockSize())
			require.ErrorIs(t, b.(Cacher).Cache(0, 5*chunkSize), ErrOutOfRange, "Cache: want the inner range check")

			d := wrap(newBare(4 * chunkSize))
			require.Equal(t, []Extent{{0, 100, 0}}, collectExtents(t, d.(Extenter), 0, 100), "default: one data extent")
			require.False(t, d.(MultiConner).CanMultiConn(), "default CanMultiConn")
			require.NoError(t, d.(Cacher).Cache(0, 100), "default Cache")
			require.True(t, b.(NonBlocker).NonBlocking(), "Memory is non-blocking")
			require.False(t, d.(NonBlocker).NonBlocking(), "default NonBlocking")
		})
	}
}

// TestWrapperDefaults checks the fallbacks a writable decorator uses when
// the wrapped backend lacks Trim, WriteZeroes or WriteAtFUA.
func TestWrapperDefaults(t *testing.T) {
	f := NewFault(newBare(testSize))
	_, err := f.WriteAt(randBytes(testSize, 9), 0)
	require.NoError(t, err)
	require.NoError(t, f.Trim(0, 10), "TRIM is a hint: ignored")
	require.ErrorIs(t, f.WriteZeroes(0, 10, false, true), ErrNotFast)
	require.False(t, f.CanFastZero())
	require.False(t, f.ReadOnly())
	require.NoError(t, f.WriteZeroes(5, testSize-5, false, false))
	want := randBytes(testSize, 9)
	clear(want[5:])
	require.Equal(t, want, readAll(t, f))
	_, err = f.WriteAtFUA([]byte{7}, 1)
	require.NoError(t, err)
}
