package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/internal/progress"
	"github.com/urfave/cli/v2"
)

// s3Images are images kept in an S3 bucket under a prefix (docs/s3.md).
type s3Images struct{}

// copyChunk is the unit of import and export.
const copyChunk = 4 << 20

func s3Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func (s3Images) create(c *cli.Context, ref string, size int64) error {
	r, err := parseS3Ref(ref)
	if err != nil {
		return usage("image create: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	st, err := newS3Store(ctx, r, "")
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if err := logdisk.Create(ctx, logdisk.Config{Store: st, Prefix: r.keyPrefix()}, size); err != nil {
		return s3Error(r, err)
	}
	fmt.Fprintf(c.App.Writer, "created %s (%s)\n", r, formatSize(size))
	return nil
}

func (s3Images) info(c *cli.Context, ref string) (imageInfo, error) {
	r, err := parseS3Ref(ref)
	if err != nil {
		return imageInfo{}, usage("image info: %v", err)
	}
	d, err := openS3Image(r, s3Options{readOnly: true}, s3Logger())
	if err != nil {
		return imageInfo{}, err
	}
	defer d.Close()
	in := d.Info()
	writer := "none (closed cleanly)"
	if in.Held {
		writer = fmt.Sprintf("epoch %d holds it (or died without closing)", in.Epoch.N)
	}
	info := imageInfo{
		Ref: r.String(), Kind: "s3", Size: in.Size, AllocatedBytes: in.LiveBytes, Base: d.Meta().Base,
		Details: []infoField{
			{"segments", in.Segments},
			{"stored_bytes", in.StoredBytes},
			{"extents", in.Extents},
			{"writer_epoch", in.Epoch.N},
			{"writer", writer},
			{"checkpoint", in.Checkpoint},
			{"last_seq", in.LastSeq},
			{"image_id", d.Meta().ID},
		},
	}
	if r.snapshot != "" { // sealed: no writer, ever
		info.Details = slices.DeleteFunc(info.Details, func(f infoField) bool { return f.Key == "writer" || f.Key == "writer_epoch" })
	}
	return info, addSnapshotInfo(&info, r)
}

func (s3Images) importFile(c *cli.Context, file, ref string) error {
	r, err := parseS3Ref(ref)
	if err != nil {
		return usage("image import: %v", err)
	}
	f, err := os.Open(file)
	if err != nil {
		return cli.Exit(fmt.Sprintf("image import: %v", unwrapPathError(err)), 1)
	}
	defer f.Close()
	size, err := fileSize(f)
	if err != nil || size == 0 {
		return cli.Exit(fmt.Sprintf("image import: %s: size %d, %v", file, size, err), 1)
	}
	if err := (s3Images{}).create(c, ref, size); err != nil {
		return err
	}
	d, err := openS3Image(r, s3Options{}, s3Logger())
	if err != nil {
		return err
	}
	bar := progress.New(os.Stderr, "import", size)
	err = copyIn(d, f, size, bar)
	bar.Done()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("image import %s: %v", r, err), 1)
	}
	return nil
}

// copyIn writes f into d, leaving all-zero chunks unwritten (holes).
func copyIn(d *logdisk.Disk, f io.ReaderAt, size int64, bar *progress.Bar) error {
	buf := make([]byte, copyChunk)
	zero := make([]byte, copyChunk)
	for off := int64(0); off < size; off += copyChunk {
		p := buf[:min(copyChunk, size-off)]
		if _, err := f.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if !bytes.Equal(p, zero[:len(p)]) {
			if _, err := d.WriteAt(p, off); err != nil {
				return err
			}
		}
		bar.Add(int64(len(p)))
	}
	return d.Sync()
}

func (s3Images) exportFile(c *cli.Context, ref, file string) error {
	r, err := parseS3Ref(ref)
	if err != nil {
		return usage("image export: %v", err)
	}
	d, err := openS3Image(r, s3Options{readOnly: true}, s3Logger())
	if err != nil {
		return err
	}
	defer d.Close()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return cli.Exit(fmt.Sprintf("image export: %v", unwrapPathError(err)), 1)
	}
	size, _ := d.Size()
	bar := progress.New(os.Stderr, "export", size)
	err = copyOut(d, f, size, bar)
	bar.Done()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("image export %s: %v", r, err), 1)
	}
	return nil
}

// copyOut writes d's data extents to f, which it leaves sparse where d
// has holes or zeroes.
func copyOut(d *logdisk.Disk, f *os.File, size int64, bar *progress.Bar) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	if err := eachData(d, size, bar, f.WriteAt); err != nil {
		return err
	}
	return f.Sync()
}

// eachData reads d's data extents (what does not read as zeroes) in
// chunks and passes each to write, at its offset.
func eachData(d *logdisk.Disk, size int64, bar *progress.Bar, write func(p []byte, off int64) (int, error)) error {
	var data []backend.Extent
	err := d.Extents(0, size, func(e backend.Extent) bool {
		if e.Flags&backend.ExtentZero == 0 {
			data = append(data, e)
		} else {
			bar.Add(e.Length)
		}
		return true
	})
	if err != nil {
		return err
	}
	buf := make([]byte, copyChunk)
	for _, e := range data {
		for off := e.Offset; off < e.Offset+e.Length; off += copyChunk {
			p := buf[:min(copyChunk, e.Offset+e.Length-off)]
			if _, err := d.ReadAt(p, off); err != nil {
				return err
			}
			if _, err := write(p, off); err != nil {
				return err
			}
			bar.Add(int64(len(p)))
		}
	}
	return nil
}

func (s3Images) gc(c *cli.Context, ref string) error {
	r, err := parseS3Ref(ref)
	if err != nil {
		return usage("image gc: %v", err)
	}
	d, err := openS3Image(r, s3Options{}, s3Logger())
	if err != nil {
		return err
	}
	before := d.Info()
	grace := c.Duration("grace")
	err = d.GC(grace)
	if err == nil && grace > 0 {
		// What GC found unreferenced goes once unreferenced for grace.
		time.Sleep(grace)
		err = d.GC(grace)
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("image gc %s: %v", r, err), 1)
	}
	after := d.Info()
	fmt.Fprintf(c.App.Writer, "%s: %d segments (%s stored) for %s live, was %d segments (%s)\n", r,
		after.Segments, progress.Size(after.StoredBytes), progress.Size(after.LiveBytes),
		before.Segments, progress.Size(before.StoredBytes))
	return nil
}

func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	return f.Seek(0, io.SeekEnd)
}
