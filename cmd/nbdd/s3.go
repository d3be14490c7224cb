package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/backend/s3store"
	"github.com/urfave/cli/v2"
)

// s3Ref is an image named s3://BUCKET/PREFIX, or a sealed snapshot of
// one, s3://BUCKET/PREFIX@SNAPSHOT (logdisk.ParseRef decides the form).
type s3Ref struct {
	raw, bucket, prefix, snapshot string
}

func parseS3Ref(ref string) (s3Ref, error) {
	r, err := logdisk.ParseRef(ref)
	if err != nil {
		return s3Ref{}, err
	}
	return s3Ref{raw: ref, bucket: r.Bucket, prefix: r.Prefix, snapshot: r.Snapshot}, nil
}

// engineRef is r as the engine names images.
func (r s3Ref) engineRef() logdisk.Ref {
	return logdisk.Ref{Bucket: r.bucket, Prefix: r.prefix, Snapshot: r.snapshot}
}

// keyPrefix is the prefix every object of the image has.
func (r s3Ref) keyPrefix() string { return r.engineRef().KeyPrefix() }

func (r s3Ref) String() string { return r.engineRef().String() }

// s3CacheDirEnv names the directory under which S3 images keep their
// journals, by bucket and prefix, unless an export says journal=DIR.
const s3CacheDirEnv = "NBDD_S3_CACHE_DIR"

// image is r without its snapshot.
func (r s3Ref) image() s3Ref {
	r.snapshot = ""
	return r
}

// journalDir is the default journal directory of ref under root (the
// user's cache directory, nbdd/s3, when root is empty).
func journalDir(root string, ref s3Ref) (string, error) {
	if root == "" {
		root = os.Getenv(s3CacheDirEnv)
	}
	if root == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no journal directory: set --s3-cache-dir or %s (%v)", s3CacheDirEnv, err)
		}
		root = filepath.Join(cache, "nbdd", "s3")
	}
	return filepath.Join(root, url.PathEscape(ref.bucket), url.PathEscape(ref.prefix)+".journal"), nil
}

// s3Options are what an --s3 export's options and the image commands set.
type s3Options struct {
	readOnly, takeover bool
	journal            string
	cacheSize, dirty   int64
	flushTimeout       time.Duration
	addressing         string
	bases              *logdisk.Bases // shares clones' bases within the process
}

func (o s3Options) config(st logdisk.Store, ref s3Ref, logger *slog.Logger) logdisk.Config {
	return logdisk.Config{
		Store: st, Prefix: ref.keyPrefix(), ReadOnly: o.readOnly, Takeover: o.takeover,
		Snapshot: ref.snapshot, Bases: o.bases, BaseStore: o.baseStore,
		JournalDir: o.journal, CacheSize: o.cacheSize, DirtyLimit: o.dirty,
		FlushTimeout: o.flushTimeout, Logger: logger,
	}
}

// baseStore is the store of a clone's base in bucket.
func (o s3Options) baseStore(ctx context.Context, bucket string) (logdisk.Store, error) {
	return newS3Store(ctx, s3Ref{bucket: bucket}, o.addressing)
}

// newS3Store returns the store of ref's bucket, set up from the AWS
// environment.
func newS3Store(ctx context.Context, ref s3Ref, addressing string) (*s3store.Store, error) {
	st, err := s3store.New(ctx, s3store.Config{Bucket: ref.bucket, Addressing: addressing})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return st, nil
}

// openTimeout bounds opening an image: reading its checkpoint and log.
const openTimeout = 2 * time.Minute

// openS3Image opens ref with o.
func openS3Image(ref s3Ref, o s3Options, logger *slog.Logger) (*logdisk.Disk, error) {
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	st, err := newS3Store(ctx, ref, o.addressing)
	if err != nil {
		return nil, err
	}
	if !o.readOnly && o.journal == "" {
		if o.journal, err = journalDir("", ref); err != nil {
			return nil, err
		}
	}
	d, err := logdisk.Open(ctx, o.config(st, ref, logger))
	if err != nil {
		return nil, s3Error(ref, err)
	}
	return d, nil
}

// s3Error turns the engine's errors into one line a user can act on.
func s3Error(ref s3Ref, err error) error {
	switch {
	case errors.Is(err, logdisk.ErrNoImage):
		return cli.Exit(fmt.Sprintf("%s: no image there (nbdd image create --size SIZE %s makes one)", ref.image(), ref.image()), 1)
	case errors.Is(err, logdisk.ErrInUse):
		return cli.Exit(fmt.Sprintf("%s: %v", ref, err), 1)
	case errors.Is(err, logdisk.ErrImageExists):
		return cli.Exit(fmt.Sprintf("%s: an image exists there already", ref), 1)
	case errors.Is(err, logdisk.ErrSnapshotReadOnly):
		return cli.Exit(fmt.Sprintf("%s is a snapshot, which is read-only: serve it ro, or write a clone of it (nbdd image clone %s s3://BUCKET/PREFIX)", ref, ref), 1)
	case errors.Is(err, logdisk.ErrNoSnapshot):
		return cli.Exit(fmt.Sprintf("%s: no such snapshot (nbdd image info %s lists them)", ref, ref.image()), 1)
	case errors.Is(err, logdisk.ErrNoConditionalPut):
		return cli.Exit(fmt.Sprintf("%s: %v; serve it read-only (ro) or use a server that supports them", ref, err), 1)
	}
	return cli.Exit(fmt.Sprintf("%s: %v", ref, err), 1)
}

// openS3Export opens an --s3 export.
func (cfg *config) openS3Export(root string) opener {
	return func(spec exportSpec) (backend.Backend, error) {
		ref, err := parseS3Ref(spec.value)
		if err != nil {
			return nil, usage("--s3 %s: %v", spec.name, err)
		}
		o, err := s3ExportOptions(spec)
		if err != nil {
			return nil, err
		}
		if ref.snapshot != "" && !o.readOnly {
			return nil, usage("--s3 %s: %s is a snapshot, which is read-only: add ,ro (or serve a clone of it: nbdd image clone %s s3://BUCKET/PREFIX)", spec.name, ref, ref)
		}
		o.bases = cfg.s3Bases
		if !o.readOnly && o.journal == "" {
			if o.journal, err = journalDir(root, ref); err != nil {
				return nil, usage("--s3 %s: %v", spec.name, err)
			}
		}
		d, err := openS3Image(ref, o, cfg.srv.Logger.With("export", spec.name))
		if err != nil {
			return nil, fmt.Errorf("export %q: %w", spec.name, err)
		}
		return d, nil
	}
}

func s3ExportOptions(spec exportSpec) (s3Options, error) {
	o := s3Options{readOnly: spec.has("ro"), takeover: spec.has("takeover"), journal: spec.opts["journal"], addressing: spec.opts["addressing"]}
	if o.readOnly && o.takeover {
		return o, usage("--s3 %s: takeover is for writers; a read-only export never writes", spec.name)
	}
	for _, f := range []struct {
		opt string
		dst *int64
	}{{"cache", &o.cacheSize}, {"dirty", &o.dirty}} {
		if v, ok := spec.opts[f.opt]; ok {
			n, err := parseSize(v)
			if err != nil || n <= 0 {
				return o, usage("--s3 %s: %s=%s: want a size above 0", spec.name, f.opt, v)
			}
			*f.dst = n
		}
	}
	if v, ok := spec.opts["flush-timeout"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return o, usage("--s3 %s: flush-timeout=%s: want a duration such as 30s", spec.name, v)
		}
		o.flushTimeout = d
	}
	switch o.addressing {
	case "", "auto", "path", "virtual":
	default:
		return o, usage("--s3 %s: addressing=%s: want auto, path or virtual", spec.name, o.addressing)
	}
	return o, nil
}
