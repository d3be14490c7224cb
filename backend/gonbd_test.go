//go:build linux

package backend

import (
	"os"
	"testing"

	gonbdbackend "github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/stretchr/testify/require"
)

// go-nbd v0.3.2's backends satisfy Backend, so anything written for go-nbd
// can be served by nbdd unchanged ...
var (
	_ Backend = gonbdbackend.NewMemoryBackend(nil)
	_ Backend = gonbdbackend.NewFileBackend((*os.File)(nil))
	_ Backend = (gonbdbackend.Backend)(nil)
)

// ... and nbdd's backends satisfy go-nbd's interface.
var (
	_ gonbdbackend.Backend = (*Memory)(nil)
	_ gonbdbackend.Backend = (*File)(nil)
	_ gonbdbackend.Backend = (*Mapped)(nil)
	_ gonbdbackend.Backend = (*Fault)(nil)
	_ gonbdbackend.Backend = readOnly{}
)

// TestGoNBDBackendWrapped runs a go-nbd backend through nbdd's decorators,
// staying inside its buffer: go-nbd's MemoryBackend panics on reads that
// cross its end and leaks its lock on early returns, which is why nbdd has
// its own Memory.
func TestGoNBDBackendWrapped(t *testing.T) {
	var b Backend = gonbdbackend.NewMemoryBackend(make([]byte, 8192))
	f := NewFault(b, FaultRule{Op: FaultRead, Offset: 4096, Length: 4096})
	_, err := f.WriteAt([]byte("go-nbd"), 10)
	require.NoError(t, err)
	got := make([]byte, 6)
	_, err = ReadOnly(f).ReadAt(got, 10)
	require.NoError(t, err)
	require.Equal(t, "go-nbd", string(got))
	_, err = f.ReadAt(got, 5000)
	require.Error(t, err, "fault rule")
	require.False(t, f.CanMultiConn(), "go-nbd backends do not claim multi-conn")
}

// TestGoNBDMemoryPanics pins the go-nbd v0.3.2 bug that nbdd's Memory
// avoids (see TestOutOfRange): a read crossing the end of its buffer
// panics instead of failing. If this fails, go-nbd has been fixed or
// upgraded; drop the test.
func TestGoNBDMemoryPanics(t *testing.T) {
	b := gonbdbackend.NewMemoryBackend(make([]byte, 8192))
	require.Panics(t, func() { b.ReadAt(make([]byte, 16), 8190) })
}
