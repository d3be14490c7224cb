package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/backend/logdisk"
	"github.com/nbdd/nbdd/backend/s3store"
	"github.com/urfave/cli/v2"
)

// s3Ref is an image named s3://BUCKET/PREFIX.
type s3Ref struct {
	raw, bucket, prefix string
}

func parseS3Ref(ref string) (s3Ref, error) {
	rest, ok := strings.CutPrefix(ref, "s3://")
	bucket, prefix, _ := strings.Cut(rest, "/")
	prefix = strings.Trim(prefix, "/")
	if !ok || bucket == "" {
		return s3Ref{}, fmt.Errorf("%q: want s3://BUCKET/PREFIX", ref)
	}
	return s3Ref{raw: ref, bucket: bucket, prefix: prefix}, nil
}

// keyPrefix is the prefix every object of the image has.
func (r s3Ref) keyPrefix() string {
	if r.prefix == "" {
		return ""
	}
	return r.prefix + "/"
}

func (r s3Ref) String() string { return "s3://" + r.bucket + "/" + r.prefix }

// s3CacheDirEnv names the directory under which S3 images keep their
// journals, by bucket and prefix, unless an export says journal=DIR.
const s3CacheDirEnv = "NBDD_S3_CACHE_DIR"

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
}

func (o s3Options) config(st logdisk.Store, ref s3Ref, logger *slog.Logger) logdisk.Config {
	return logdisk.Config{
		Store: st, Prefix: ref.keyPrefix(), ReadOnly: o.readOnly, Takeover: o.takeover,
		JournalDir: o.journal, CacheSize: o.cacheSize, DirtyLimit: o.dirty,
		FlushTimeout: o.flushTimeout, Logger: logger,
	}
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
		return cli.Exit(fmt.Sprintf("%s: no image there (nbdd image create --size SIZE %s makes one)", ref, ref), 1)
	case errors.Is(err, logdisk.ErrInUse):
		return cli.Exit(fmt.Sprintf("%s: %v", ref, err), 1)
	case errors.Is(err, logdisk.ErrImageExists):
		return cli.Exit(fmt.Sprintf("%s: an image exists there already", ref), 1)
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
