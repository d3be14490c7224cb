package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/progress"
	"github.com/urfave/cli/v2"
)

// localImages are images kept in local files: raw files and copy-on-write
// overlays over a read-only raw base (docs/clones.md). A local snapshot
// is a standalone, read-only raw image, so every base is a raw file and
// a clone is one level deep.
type localImages struct{}

// create makes a sparse raw image of size bytes.
func (localImages) create(c *cli.Context, ref string, size int64) error {
	return writeImage(ref, 0o644, func(f *os.File) error { return f.Truncate(size) })
}

// info describes a raw image or an overlay.
func (localImages) info(c *cli.Context, ref string) (imageInfo, error) {
	overlay, err := backend.IsOverlay(ref)
	if err != nil {
		return imageInfo{}, imageErr("info", err)
	}
	if overlay {
		return overlayInfo(ref)
	}
	return rawInfo(ref)
}

func rawInfo(ref string) (imageInfo, error) {
	f, err := backend.OpenFile(ref, true)
	if err != nil {
		return imageInfo{}, imageErr("info", err)
	}
	defer f.Close()
	size, _ := f.Size()
	info := imageInfo{Ref: ref, Kind: "raw", Size: size, AllocatedBytes: size}
	if err := f.Extents(0, size, func(e backend.Extent) bool {
		if e.Flags&backend.ExtentHole != 0 {
			info.AllocatedBytes -= e.Length
		}
		return true
	}); err != nil {
		return imageInfo{}, imageErr("info", err)
	}
	return info, nil
}

func overlayInfo(ref string) (imageInfo, error) {
	o, err := backend.ReadOverlayInfo(ref)
	if err != nil {
		return imageInfo{}, imageErr("info", err)
	}
	info := imageInfo{Ref: ref, Kind: "overlay", Size: o.Size, AllocatedBytes: o.DataBytes, Base: o.Base}
	info.Details = []infoField{
		{"block size", o.BlockSize},
		{"zeroed", fmt.Sprintf("%s (%d bytes; TRIM and WRITE_ZEROES mask the base there)", formatSize(o.ZeroBytes), o.ZeroBytes)},
		{"base check", baseCheck(o)},
	}
	if o.InUse {
		info.Details = append(info.Details, infoField{"in use", "a writer holds it: the figures are as of its last FLUSH"})
	}
	return info, nil
}

// baseCheck says whether the overlay's base is there and unchanged.
func baseCheck(o backend.OverlayInfo) string {
	base, err := backend.OpenCloneBase(o.Base, false, false)
	if err != nil {
		return fmt.Sprintf("cannot open the base: %v", unwrapPathError(err))
	}
	defer base.Close()
	if err := o.CheckBase(base); err != nil {
		return err.Error()
	}
	return "ok: same size, same first and last MiB, same modification time"
}

// importFile copies a raw file into a new raw image, sparse where the
// file is.
func (localImages) importFile(c *cli.Context, file, ref string) error {
	return copyRaw(c, "import", file, ref, 0o644)
}

// exportFile writes an image out as a standalone raw file: an overlay
// flattened, a raw image copied.
func (l localImages) exportFile(c *cli.Context, ref, file string) error {
	return copyImage(c, "export", ref, file, 0o644)
}

// gc has nothing to do for local images: an overlay punches the space of
// trimmed blocks out at once and rewrites blocks in place.
func (localImages) gc(c *cli.Context, ref string) error {
	return cli.Exit("image gc: not needed for local files: an overlay frees the space of trimmed blocks at once (hole punching) and rewrites blocks in place", 2)
}

// snapshot writes REF's current content as NAME, a standalone raw image
// made read-only, which clones may then use as their base. An overlay
// served by a writer is refused: its content is changing.
func (localImages) snapshot(c *cli.Context, ref, name string) error {
	return copyImage(c, "snapshot", ref, name, 0o444)
}

// clone creates an empty overlay over a raw base.
func (localImages) clone(c *cli.Context, basePath, overlay string) error {
	bs, err := cloneBlockSize(c)
	if err != nil {
		return err
	}
	if isOv, err := backend.IsOverlay(basePath); err != nil {
		return imageErr("clone", err)
	} else if isOv {
		return cli.Exit(fmt.Sprintf("image clone: %s is an overlay; clone a raw image (image snapshot %s BASE.raw makes one)", basePath, basePath), 2)
	}
	base, err := backend.OpenCloneBase(basePath, false, false)
	if err != nil {
		return imageErr("clone", err)
	}
	defer base.Close()
	if err := backend.CreateOverlay(overlay, base, bs); err != nil {
		return imageErr("clone", err)
	}
	return nil
}

// cloneBlockSize reads --block-size.
func cloneBlockSize(c *cli.Context) (int, error) {
	if !c.IsSet("block-size") {
		return 0, nil
	}
	n, err := parseSize(c.String("block-size"))
	if err != nil || n < backend.MinCloneBlockSize || n > backend.MaxCloneBlockSize || n&(n-1) != 0 {
		return 0, usage("--block-size %s: want a power of 2 from 4KiB to 1MiB", c.String("block-size"))
	}
	return int(n), nil
}

// flatten writes a clone out as a standalone raw image.
func (localImages) flatten(c *cli.Context, clone, out string) error {
	if isOv, err := backend.IsOverlay(clone); err != nil {
		return imageErr("flatten", err)
	} else if !isOv {
		return cli.Exit(fmt.Sprintf("image flatten: %s is not an overlay (image export copies a raw image)", clone), 2)
	}
	return copyImage(c, "flatten", clone, out, 0o644)
}

// copyImage writes the content of ref, an overlay or a raw image, into a
// new raw image out with the given mode.
func copyImage(c *cli.Context, cmd, ref, out string, mode os.FileMode) error {
	isOv, err := backend.IsOverlay(ref)
	if err != nil {
		return imageErr(cmd, err)
	}
	if !isOv {
		return copyRaw(c, cmd, ref, out, mode)
	}
	o, err := backend.ReadOverlayInfo(ref)
	if err != nil {
		return imageErr(cmd, err)
	}
	base, err := backend.OpenCloneBase(o.Base, false, false)
	if err != nil {
		return imageErr(cmd, fmt.Errorf("the base of %s: %w", ref, err))
	}
	defer base.Close()
	clone, err := backend.OpenClone(ref, base, true) // shared lock: no writer meanwhile
	if err != nil {
		return imageErr(cmd, err)
	}
	defer clone.Close()
	return writeImage(out, mode, func(f *os.File) error { return copySparse(c, cmd, f, clone) })
}

// copyRaw copies the raw image src into a new raw image out.
func copyRaw(c *cli.Context, cmd, src, out string, mode os.FileMode) error {
	f, err := backend.OpenFile(src, true)
	if err != nil {
		return imageErr(cmd, err)
	}
	defer f.Close()
	return writeImage(out, mode, func(dst *os.File) error { return copySparse(c, cmd, dst, f) })
}

// writeImage creates the image path, which must not exist, with fill,
// whole or not at all (backend.CreateImageFile).
func writeImage(path string, mode os.FileMode, fill func(f *os.File) error) error {
	exists := cli.Exit(fmt.Sprintf("image: %s already exists", path), 1)
	if _, err := os.Lstat(path); err == nil {
		return exists // before any copying
	}
	if err := backend.CreateImageFile(path, mode, fill); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return exists
		}
		return imageErr("write "+path, err)
	}
	return nil
}

// copySparse copies src into dst at the same offsets, leaving holes where
// src reports zeroes and where a 4 KiB block of data is all zeroes, as
// qemu-img convert does, with a progress bar on stderr.
func copySparse(c *cli.Context, label string, dst *os.File, src backend.Backend) error {
	size, err := src.Size()
	if err != nil {
		return err
	}
	if err := dst.Truncate(size); err != nil {
		return err
	}
	bar := progress.New(c.App.ErrWriter, label, size)
	defer bar.Done()
	ext, _ := src.(backend.Extenter)
	buf := make([]byte, 1<<20)
	const window = 1 << 30 // extents asked for at a time
	for off := int64(0); off < size; off += window {
		var extents []backend.Extent
		n := min(window, size-off)
		if ext == nil {
			extents = []backend.Extent{{Offset: off, Length: n}}
		} else if err := ext.Extents(off, n, func(e backend.Extent) bool { extents = append(extents, e); return true }); err != nil {
			return err
		}
		for _, e := range extents {
			lo, hi := max(e.Offset, off), min(e.Offset+e.Length, off+n)
			if e.Flags&backend.ExtentZero == 0 {
				if err := copyData(dst, src, lo, hi, buf, bar); err != nil {
					return err
				}
			} else {
				bar.Add(hi - lo)
			}
		}
	}
	return nil
}

// copyData copies [lo, hi) of src into dst, skipping zero blocks.
func copyData(dst *os.File, src io.ReaderAt, lo, hi int64, buf []byte, bar *progress.Bar) error {
	for pos := lo; pos < hi; {
		p := buf[:min(int64(len(buf)), hi-pos)]
		if _, err := src.ReadAt(p, pos); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read at %d: %w", pos, err)
		}
		if err := writeNonZero(dst, p, pos); err != nil {
			return err
		}
		bar.Add(int64(len(p)))
		pos += int64(len(p))
	}
	return nil
}

// writeNonZero writes the runs of p's 4 KiB blocks that are not all
// zeroes at off.
func writeNonZero(dst *os.File, p []byte, off int64) error {
	const blk = 4096
	var zero [blk]byte
	start := -1
	for i := 0; i < len(p); i += blk {
		end := min(i+blk, len(p))
		isData := !bytes.Equal(p[i:end], zero[:end-i])
		switch {
		case isData && start < 0:
			start = i
		case !isData && start >= 0:
			if _, err := dst.WriteAt(p[start:i], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
	}
	if start >= 0 {
		_, err := dst.WriteAt(p[start:], off+int64(start))
		return err
	}
	return nil
}

// imageErr is a failed image command: one line, exit status 1.
func imageErr(cmd string, err error) error {
	return cli.Exit(fmt.Sprintf("image %s: %v", cmd, unwrapPathError(err)), 1)
}
