package server

import (
	"errors"
	"fmt"
	"io/fs"
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
	// Refuse, if set, withholds the files for which it returns true:
	// Open fails for them and List leaves them out. It is checked at
	// every Open, so it also catches files that appear later (nbdd uses
	// it for the files of writable load exports, whose in-memory copy
	// would overwrite writes made through the directory). Set it before
	// serving.
	Refuse func(fs.FileInfo) bool

	root     *os.Root
	dir      string
	readOnly bool
}

// ErrRefusedFile is returned by DirSource.Open for a file Refuse withholds.
var ErrRefusedFile = errors.New("nbd: file withheld from the directory's exports")

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
// nothing about the filesystem. A file Refuse withholds gives
// ErrRefusedFile, which the server logs and the client sees as an export
// that cannot be opened.
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
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, nil
	}
	if d.Refuse != nil && d.Refuse(fi) {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %q", ErrRefusedFile, name)
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
		fi, err := d.root.Stat(name)
		if err == nil && fi.Mode().IsRegular() && (d.Refuse == nil || !d.Refuse(fi)) {
			out = append(out, Export{Name: name, ReadOnly: d.readOnly})
		}
	}
	return out, nil
}
