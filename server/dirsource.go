package server

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nbdd/nbdd/backend"
)

// DirSource exports every regular file in one directory under its file
// name. Files are looked up when a client asks, so files added later are
// visible. Names are resolved through os.Root, so "..", absolute paths and
// symlinks that leave the directory are refused by the kernel-checked walk
// rather than by string matching alone.
type DirSource struct {
	root     *os.Root
	dir      string
	readOnly bool
}

// ErrBadExportName is returned for a name that cannot name a file in the
// directory.
var ErrBadExportName = errors.New("nbd: export name is not a plain file name")

// NewDirSource opens dir for exporting.
func NewDirSource(dir string, readOnly bool) (*DirSource, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &DirSource{root: root, dir: dir, readOnly: readOnly}, nil
}

// Close releases the directory.
func (d *DirSource) Close() error { return d.root.Close() }

// checkName refuses anything but a plain file name in the directory.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("%w: %q", ErrBadExportName, name)
	}
	return nil
}

// Open opens the file called name. Unknown and refused names give
// (nil, nil, nil), so the client sees an unknown export and learns
// nothing about the filesystem.
func (d *DirSource) Open(name string) (*Export, func() error, error) {
	if checkName(name) != nil {
		return nil, nil, nil
	}
	flag := os.O_RDWR
	if d.readOnly {
		flag = os.O_RDONLY
	}
	f, err := d.root.OpenFile(name, flag, 0)
	if err != nil {
		return nil, nil, nil
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, nil
	}
	b, err := backend.NewFile(f, d.readOnly)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	closeFn := b.Close
	if !d.readOnly {
		// A connection that ends without NBD_CMD_DISC (a crash, Shutdown)
		// still leaves its writes durable once the file is closed.
		closeFn = func() error { return errors.Join(b.Sync(), b.Close()) }
	}
	return &Export{Name: name, Backend: b, ReadOnly: d.readOnly}, closeFn, nil
}

// List returns the directory's regular files (symlinks that stay inside
// the directory included).
func (d *DirSource) List() ([]Export, error) {
	f, err := d.root.Open(".")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var out []Export
	for _, name := range names {
		if checkName(name) != nil {
			continue
		}
		if fi, err := d.root.Stat(name); err == nil && fi.Mode().IsRegular() {
			out = append(out, Export{Name: name, ReadOnly: d.readOnly})
		}
	}
	return out, nil
}
