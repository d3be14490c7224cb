package backend

import (
	"errors"
	"os"
	"path/filepath"
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

// decorators are nbdd's decorators, applied to b.
var decorators = map[string]func(Backend) Backend{
	"ReadOnly": ReadOnly,
	"Fault":    func(b Backend) Backend { return NewFault(b) },
}

// TestWrapperPassThrough checks that decorators pass the capabilities of
// the wrapped backend through, and that Has finds on them only what the
// wrapped backend has.
func TestWrapperPassThrough(t *testing.T) {
	for name, wrap := range decorators {
		t.Run(name, func(t *testing.T) {
			m := NewMemory(4 * chunkSize)
			m.WriteAt([]byte{1}, chunkSize)
			b := wrap(m)
			e, ok := Has[Extenter](b)
			require.True(t, ok, "Has[Extenter] over Memory")
			require.Equal(t, collectExtents(t, m, 0, 4*chunkSize), collectExtents(t, e, 0, 4*chunkSize))
			require.True(t, b.(MultiConner).CanMultiConn())
			require.Equal(t, uint32(1), b.(BlockSizer).MinBlockSize())
			require.Equal(t, uint32(512), wrap(blockSized{m}).(BlockSizer).MinBlockSize())
			c, ok := Has[Cacher](b)
			require.True(t, ok, "Has[Cacher] over Memory")
			require.ErrorIs(t, c.Cache(0, 5*chunkSize), ErrOutOfRange, "Cache: want the inner range check")
			require.True(t, b.(NonBlocker).NonBlocking(), "Memory is non-blocking")

			d := wrap(newBare(4 * chunkSize))
			for cap, has := range map[string]bool{
				"Trimmer":   hasCap[Trimmer](d),
				"Zeroer":    hasCap[Zeroer](d),
				"Cacher":    hasCap[Cacher](d),
				"FUAWriter": hasCap[FUAWriter](d),
				"Extenter":  hasCap[Extenter](d),
			} {
				require.False(t, has, "Has[%s] over a backend without it", cap)
			}
			require.False(t, d.(MultiConner).CanMultiConn(), "default CanMultiConn")
			require.False(t, d.(FastZeroer).CanFastZero(), "default CanFastZero")
			require.False(t, d.(NonBlocker).NonBlocking(), "default NonBlocking")
			require.ErrorIs(t, d.(Cacher).Cache(0, 10), errors.ErrUnsupported, "Cache called anyway")
			require.ErrorIs(t, d.(Extenter).Extents(0, 10, func(Extent) bool { return true }), errors.ErrUnsupported)
		})
	}
}

func hasCap[T any](b Backend) bool { _, ok := Has[T](b); return ok }

// TestHasLooksThroughDecorators: a capability is found on a stack of
// decorators only if the backend at the bottom has it.
func TestHasLooksThroughDecorators(t *testing.T) {
	require.True(t, hasCap[Trimmer](NewFault(ReadOnly(NewMemory(1)))), "Memory trims, through two decorators")
	require.False(t, hasCap[Trimmer](NewFault(ReadOnly(newBare(1)))), "a bare backend does not")
	require.True(t, hasCap[Trimmer](NewMemory(1)), "no decorator")
	require.False(t, hasCap[Trimmer](newBare(1)))
}

// TestDecoratorRule: nbdd's decorators never forward an accelerator that
// moves data around them (they would be bypassed: a read-only export
// written through lent memory, a fault that never fires), and advertise,
// through Has, the capabilities of the backend they wrap, whatever it is.
func TestDecoratorRule(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	require.NoError(t, os.WriteFile(path, make([]byte, 1<<20), 0o600))
	f, err := OpenFile(path, false)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	mp, err := NewMapped(1<<20, false)
	require.NoError(t, err)
	t.Cleanup(func() { mp.Close() })
	backends := map[string]Backend{"Memory": NewMemory(1 << 20), "File": f, "Mapped": mp, "bare": newBare(1 << 20)}
	// Every accelerator that hands the server another way to the data.
	bypasses := map[string]func(Backend) bool{
		"Viewer":       func(b Backend) bool { _, ok := b.(Viewer); return ok },
		"WriteViewer":  func(b Backend) bool { _, ok := b.(WriteViewer); return ok },
		"FileSource":   func(b Backend) bool { _, ok := b.(FileSource); return ok },
		"DataKnower":   func(b Backend) bool { _, ok := b.(DataKnower); return ok },
		"PipeWriter":   func(b Backend) bool { _, ok := b.(PipeWriter); return ok },
		"CachedReader": func(b Backend) bool { _, ok := b.(CachedReader); return ok },
	}
	caps := map[string]func(Backend) bool{
		"Trimmer": hasCap[Trimmer], "Zeroer": hasCap[Zeroer], "Cacher": hasCap[Cacher],
		"FUAWriter": hasCap[FUAWriter], "Extenter": hasCap[Extenter],
	}
	for dname, wrap := range decorators {
		for bname, b := range backends {
			d := wrap(b)
			for acc, has := range bypasses {
				require.False(t, has(d), "%s over %s forwards %s", dname, bname, acc)
			}
			for cap, has := range caps {
				require.Equal(t, has(b), has(d), "%s over %s: Has[%s]", dname, bname, cap)
			}
			nb, ok := b.(NonBlocker)
			require.Equal(t, ok && nb.NonBlocking(), d.(NonBlocker).NonBlocking(), "%s over %s: NonBlocking", dname, bname)
			mc, ok := b.(MultiConner)
			require.Equal(t, ok && mc.CanMultiConn(), d.(MultiConner).CanMultiConn(), "%s over %s: CanMultiConn", dname, bname)
		}
	}
	require.False(t, NewFault(NewMemory(1), FaultRule{Op: FaultRead, Delay: 1}).NonBlocking(), "a Fault that delays may block")
}
