package server

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/nbdd/nbdd/internal/testenv"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// newDirTester serves a directory holding a.img (8 KiB), a subdirectory,
// a hidden file, a symlink to a.img and a symlink out of the directory.
func newDirTester(t *testing.T, strategy string, readOnly bool) (*serverTester, string) {
	t.Helper()
	base := t.TempDir()
	dir := filepath.Join(base, "exports")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.img"), make([]byte, 8192), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sub", "x"), make([]byte, 512), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".hidden"), make([]byte, 512), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(base, "secret"), []byte("do not serve"), 0o644))
	require.NoError(t, os.Symlink("a.img", filepath.Join(dir, "link")))
	require.NoError(t, os.Symlink(filepath.Join(base, "secret"), filepath.Join(dir, "escape")))
	require.NoError(t, os.Symlink("../secret", filepath.Join(dir, "escape-rel")))
	ds, err := NewDirSource(dir, readOnly)
	require.NoError(t, err)
	t.Cleanup(func() { ds.Close() })
	return newServerTester(t, strategy, &Server{Source: ds}), dir
}

func TestDirSource(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st, dir := newDirTester(t, strategy, false)
		st.start()
		require.ElementsMatch(t, []string{"a.img", "link"}, st.list(), "LIST of a directory")
		for _, name := range []string{"", ".", "..", "../secret", "/etc/passwd", dir + "/a.img", "sub", "sub/x",
			".hidden", "escape", "escape-rel", "a.img\x00", "missing"} {
			_, rep := st.infoOrGoErr(protocol.OptInfo, name)
			require.Equal(t, protocol.RepErrUnknown, rep.typ, "INFO %q: %q", name, rep.data)
		}
		require.Equal(t, uint64(8192), st.info("link").size, "symlink inside the directory")

		// A file added after the server started is visible.
		require.NoError(t, os.WriteFile(filepath.Join(dir, "later.img"), make([]byte, 4096), 0o644))
		require.Contains(t, st.list(), "later.img")
		st.goExport("later.img")
		require.Equal(t, uint64(4096), st.size)
		st.write(1, 100, []byte("persisted"))
		st.wantReply(1, protocol.EOK)
		st.flush(2)
		st.wantReply(2, protocol.EOK)
		got, err := os.ReadFile(filepath.Join(dir, "later.img"))
		require.NoError(t, err)
		require.Equal(t, "persisted", string(got[100:109]))
	})
}

func TestDirSourceReadOnly(t *testing.T) {
	st, _ := newDirTester(t, "pool", true)
	st.start()
	ei := st.goExport("a.img")
	require.NotZero(t, ei.flags&protocol.FlagReadOnly, "flags %v", ei.flags)
	st.write(1, 0, []byte("x"))
	st.wantReply(1, protocol.EPERM)
	st.read(2, 0, 8192)
	st.wantRead(2, make([]byte, 8192))
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"disk.img": true, "a": true, "a b": true, "a..b": true,
		"": false, ".": false, "..": false, ".hidden": false, "a/b": false, "/abs": false,
		"../up": false, "nul\x00": false,
	} {
		if err := checkName(name); (err == nil) != ok {
			t.Errorf("checkName(%q): got %v; want ok=%v", name, err, ok)
		}
	}
}

// countFDs returns the number of open file descriptors of this process.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		testenv.SkipOutsideCI(t, "cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// TestDirSourceNoFDLeak: a client that selects a directory export and
// goes away before reading the reply does not leave the file open (GO and
// EXPORT_NAME), nor does INFO.
func TestDirSourceNoFDLeak(t *testing.T) {
	_, dir := newDirTester(t, "pool", false)
	ds, err := NewDirSource(dir, false)
	require.NoError(t, err)
	t.Cleanup(func() { ds.Close() })
	before := countFDs(t)
	for range 10 {
		for _, opt := range []protocol.Opt{protocol.OptGo, protocol.OptInfo, protocol.OptExportName} {
			t.Run(opt.String(), func(t *testing.T) {
				st := newServerTester(t, "pool", &Server{Source: ds})
				st.start()
				data := []byte("a.img")
				if opt != protocol.OptExportName {
					data = protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: "a.img"})
				}
				st.sendOption(opt, data)
				st.nc.Close()
				st.wantServeResult(func(error) bool { return true }, "any result")
			})
		}
	}
	if after := countFDs(t); after > before {
		t.Fatalf("open file descriptors: got %d after 30 abandoned handshakes; want %d as before", after, before)
	}
}

// TestDirSourceRefuse: a file Refuse withholds cannot be opened or listed,
// under its own name or under a name it gets after the source was made
// (a hard link), while the directory's other files are served as usual.
func TestDirSourceRefuse(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.img", "b.img"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), make([]byte, 4096), 0o644))
	}
	withheld, err := os.Stat(filepath.Join(dir, "a.img"))
	require.NoError(t, err)
	ds, err := NewDirSource(dir, false)
	require.NoError(t, err)
	t.Cleanup(func() { ds.Close() })
	ds.Refuse = func(fi fs.FileInfo) bool { return os.SameFile(fi, withheld) }
	require.NoError(t, os.Link(filepath.Join(dir, "a.img"), filepath.Join(dir, "later.img")))

	for _, name := range []string{"a.img", "later.img"} {
		e, closeFn, err := ds.Open(name)
		require.ErrorIs(t, err, ErrRefusedFile, name)
		require.Nil(t, e, name)
		require.Nil(t, closeFn, name)
	}
	e, closeFn, err := ds.Open("b.img")
	require.NoError(t, err)
	require.NotNil(t, e)
	require.NoError(t, closeFn())
	list, err := ds.List()
	require.NoError(t, err)
	require.Equal(t, []Export{{Name: "b.img"}}, list)
}
