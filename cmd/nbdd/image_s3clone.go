package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/internal/progress"
	"github.com/urfave/cli/v2"
)

// The S3 snapshot, clone, flatten and rm commands (docs/s3.md "Snapshots
// and clones").

// removeTimeout bounds image rm, which lists and deletes every object.
const removeTimeout = 30 * time.Minute

// imageRemoveCommand is nbdd image rm, named as rbd names its own.
func imageRemoveCommand() *cli.Command {
	return &cli.Command{
		Name: "rm", Aliases: []string{"remove"}, Usage: "remove an S3 image, or a snapshot of one (REF@SNAPSHOT)", ArgsUsage: "REF",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "remove an image even if a writer holds it (its nbdd fails from then on)"}},
		Action: imageAction(1, func(c *cli.Context, st imageStore, refs []string) error {
			rm, ok := st.(interface {
				remove(c *cli.Context, ref string) error
			})
			if !ok {
				return cli.Exit("image rm: not for local files (rm removes a file)", 2)
			}
			return rm.remove(c, refs[0])
		}),
	}
}

// s3Engine returns the engine's configuration for r with a store of its
// bucket.
func s3Engine(ctx context.Context, r s3Ref) (logdisk.Config, error) {
	st, err := newS3Store(ctx, r, "")
	if err != nil {
		return logdisk.Config{}, cli.Exit(err.Error(), 1)
	}
	o := s3Options{}
	return logdisk.Config{Store: st, Prefix: r.keyPrefix(), BaseStore: o.baseStore, Logger: s3Logger()}, nil
}

// snapshot seals snapshot name of an image, whether a writer serves it
// or not: the snapshot holds every write a FLUSH acknowledged before.
func (s3Images) snapshot(c *cli.Context, ref, name string) error {
	r, err := parseS3Ref(ref)
	if err != nil {
		return usage("image snapshot: %v", err)
	}
	if r.snapshot != "" {
		return usage("image snapshot: %s is a snapshot already; name the image and the new snapshot: %s NAME", r, r.image())
	}
	if err := logdisk.ValidSnapshotName(name); err != nil {
		return usage("image snapshot: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	cfg, err := s3Engine(ctx, r)
	if err != nil {
		return err
	}
	si, err := logdisk.Snapshot(ctx, cfg, name)
	if err != nil {
		return s3Error(r, err)
	}
	fmt.Fprintf(c.App.Writer, "sealed %s@%s (checkpoint %d)\n", r, name, si.Checkpoint)
	return nil
}

// clone creates an S3 image over a sealed snapshot of another.
func (s3Images) clone(c *cli.Context, base, clone string) error {
	if !isS3Ref(base) || !isS3Ref(clone) {
		return usage("image clone: an S3 clone and its base are both in S3: BASE is s3://BUCKET/PREFIX@SNAPSHOT, CLONE s3://BUCKET/PREFIX")
	}
	b, err := parseS3Ref(base)
	if err != nil {
		return usage("image clone: %v", err)
	}
	q, err := parseS3Ref(clone)
	if err != nil {
		return usage("image clone: %v", err)
	}
	switch {
	case b.snapshot == "":
		return usage("image clone: %s is an image; clone a sealed snapshot of it, %s@SNAPSHOT (nbdd image snapshot %s NAME seals one)", b, b, b)
	case q.snapshot != "":
		return usage("image clone: %s names a snapshot; a clone is an image, s3://BUCKET/PREFIX", q)
	case q.bucket == b.bucket && q.prefix == b.prefix:
		return usage("image clone: the clone must be another image than its base")
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	cfg, err := s3Engine(ctx, q)
	if err != nil {
		return err
	}
	if err := logdisk.CreateClone(ctx, cfg, b.engineRef(), q.String()); err != nil {
		if errors.Is(err, logdisk.ErrNoImage) || errors.Is(err, logdisk.ErrNoSnapshot) || errors.Is(err, logdisk.ErrSnapshotRemoving) {
			return s3Error(b, err)
		}
		return s3Error(q, err)
	}
	fmt.Fprintf(c.App.Writer, "created %s, a clone of %s\n", q, b)
	return nil
}

// flatten writes a clone (or a snapshot of one) out as a standalone
// image: a raw file, as the local flatten writes, or a new S3 image.
func (s3Images) flatten(c *cli.Context, clone, out string) error {
	if !isS3Ref(clone) {
		return usage("image flatten: %s is a local file; an S3 clone's flatten reads the clone from S3 (CLONE is s3://...)", clone)
	}
	r, err := parseS3Ref(clone)
	if err != nil {
		return usage("image flatten: %v", err)
	}
	d, err := openS3Image(r, s3Options{readOnly: true}, s3Logger())
	if err != nil {
		return err
	}
	defer d.Close()
	if d.Meta().Base == "" {
		return cli.Exit(fmt.Sprintf("image flatten: %s is not a clone (image export copies an image)", r), 2)
	}
	if r.snapshot == "" && d.Info().Held {
		return cli.Exit(fmt.Sprintf("image flatten: a writer holds %s; flatten a snapshot of it (nbdd image snapshot %s NAME, then image flatten %s@NAME OUT)", r, r, r), 1)
	}
	if isS3Ref(out) {
		return flattenToS3(c, d, out)
	}
	return flattenToFile(d, out)
}

// flattenToFile writes d to a new raw file, sparse where d reads as
// zeroes; a failed flatten leaves no file.
func flattenToFile(d *logdisk.Disk, out string) error {
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return cli.Exit(fmt.Sprintf("image flatten: %s already exists", out), 1)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("image flatten: %v", unwrapPathError(err)), 1)
	}
	size, _ := d.Size()
	bar := progress.New(os.Stderr, "flatten", size)
	err = copyOut(d, f, size, bar)
	bar.Done()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return cli.Exit(fmt.Sprintf("image flatten %s: %v", out, err), 1)
	}
	return nil
}

// flattenToS3 writes d into a new S3 image out; a failed flatten removes
// what it made.
func flattenToS3(c *cli.Context, d *logdisk.Disk, out string) error {
	o, err := parseS3Ref(out)
	if err != nil {
		return usage("image flatten: %v", err)
	}
	if o.snapshot != "" {
		return usage("image flatten: %s names a snapshot; flatten writes a new image, s3://BUCKET/PREFIX", o)
	}
	size, _ := d.Size()
	if err := (s3Images{}).create(c, out, size); err != nil {
		return err
	}
	dst, err := openS3Image(o, s3Options{}, s3Logger())
	if err != nil {
		return err
	}
	bar := progress.New(os.Stderr, "flatten", size)
	err = copyDiskData(dst, d, size, bar)
	bar.Done()
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
		defer cancel()
		if cfg, cerr := s3Engine(ctx, o); cerr == nil {
			logdisk.Remove(ctx, cfg, true)
		}
		return cli.Exit(fmt.Sprintf("image flatten %s: %v", o, err), 1)
	}
	return nil
}

// copyDiskData copies the data extents of src into dst at the same offsets
// (what src reads as zeroes stays unwritten in dst), then FLUSHes dst.
func copyDiskData(dst, src *logdisk.Disk, size int64, bar *progress.Bar) error {
	if err := eachData(src, size, bar, dst.WriteAt); err != nil {
		return err
	}
	return dst.Sync()
}

// remove removes an image, or with REF@SNAPSHOT a snapshot of one. An
// image with snapshots, and a snapshot with clones, are refused; removing
// a clone never touches its base's objects (but its registration).
func (s3Images) remove(c *cli.Context, ref string) error {
	r, err := parseS3Ref(ref)
	if err != nil {
		return usage("image rm: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	cfg, err := s3Engine(ctx, r)
	if err != nil {
		return err
	}
	if r.snapshot != "" {
		err := logdisk.RemoveSnapshot(ctx, cfg, r.snapshot)
		if errors.Is(err, logdisk.ErrHasClones) {
			return cli.Exit(fmt.Sprintf("image rm: %s: %v; remove or flatten them first", r, err), 1)
		}
		if err != nil {
			return s3Error(r, err)
		}
		fmt.Fprintf(c.App.Writer, "removed snapshot %s (its data goes at the image's next gc)\n", r)
		return nil
	}
	err = logdisk.Remove(ctx, cfg, c.Bool("force"))
	switch {
	case errors.Is(err, logdisk.ErrHasSnapshots):
		return cli.Exit(fmt.Sprintf("image rm: %s: %v; remove them first (nbdd image rm %s@SNAPSHOT)", r, err, r), 1)
	case errors.Is(err, logdisk.ErrInUse):
		return cli.Exit(fmt.Sprintf("image rm: %s: %v; --force removes it anyway", r, err), 1)
	case err != nil:
		return s3Error(r, err)
	}
	// This host's journal of the image is moot now, and would keep a new
	// image at the same place from opening.
	if dir, err := journalDir("", r); err == nil {
		os.RemoveAll(dir)
	}
	fmt.Fprintf(c.App.Writer, "removed %s\n", r)
	return nil
}

// addSnapshotInfo adds an image's snapshots, with their clones, to info.
func addSnapshotInfo(info *imageInfo, r s3Ref) error {
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	cfg, err := s3Engine(ctx, r.image())
	if err != nil {
		return err
	}
	if r.snapshot != "" {
		info.Details = append(info.Details, infoField{"snapshot", r.snapshot})
		return nil
	}
	snaps, err := logdisk.ListSnapshots(ctx, cfg.Store, cfg.Prefix)
	if err != nil {
		return s3Error(r, err)
	}
	var list []string
	for _, s := range snaps {
		item := fmt.Sprintf("%s (checkpoint %d", s.Name, s.Checkpoint)
		if len(s.Clones) > 0 {
			names := make([]string, len(s.Clones))
			for i, cl := range s.Clones {
				names[i] = cl.Image
			}
			item += fmt.Sprintf("; clones: %s", strings.Join(names, ", "))
		}
		list = append(list, item+")")
	}
	if len(list) > 0 {
		info.Details = append(info.Details, infoField{"snapshots", strings.Join(list, ", ")})
	}
	return nil
}
