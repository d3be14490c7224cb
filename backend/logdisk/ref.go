package logdisk

import (
	"fmt"
	"strings"
)

// Ref names an image in a bucket, or a sealed snapshot of one:
// s3://BUCKET/PREFIX[@SNAPSHOT]. A clone's meta names its base so.
type Ref struct {
	Bucket string
	// Prefix is the image's key prefix without its trailing "/" (empty:
	// the image is at the root of the bucket).
	Prefix string
	// Snapshot names a sealed snapshot of the image ("" for the image).
	Snapshot string
}

// ParseRef parses s3://BUCKET/PREFIX[@SNAPSHOT]. The snapshot is what
// follows the last "@" of the last path element.
func ParseRef(s string) (Ref, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	bucket, prefix, _ := strings.Cut(rest, "/")
	if !ok || bucket == "" {
		return Ref{}, fmt.Errorf("%q: want s3://BUCKET/PREFIX[@SNAPSHOT]", s)
	}
	r := Ref{Bucket: bucket, Prefix: strings.Trim(prefix, "/")}
	last := r.Prefix[strings.LastIndexByte(r.Prefix, '/')+1:]
	if i := strings.LastIndexByte(last, '@'); i >= 0 {
		r.Snapshot = last[i+1:]
		r.Prefix = strings.TrimRight(r.Prefix[:len(r.Prefix)-len(last)+i], "/")
		if err := ValidSnapshotName(r.Snapshot); err != nil {
			return Ref{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	return r, nil
}

// KeyPrefix is the prefix of every object of the image (Config.Prefix).
func (r Ref) KeyPrefix() string {
	if r.Prefix == "" {
		return ""
	}
	return r.Prefix + "/"
}

// Image is r without its snapshot.
func (r Ref) Image() Ref { return Ref{Bucket: r.Bucket, Prefix: r.Prefix} }

func (r Ref) String() string {
	s := "s3://" + r.Bucket + "/" + r.Prefix
	if r.Snapshot != "" {
		s += "@" + r.Snapshot
	}
	return s
}

// maxSnapshotName bounds a snapshot's name, which is part of object keys.
const maxSnapshotName = 128

// ValidSnapshotName reports a name that cannot name a snapshot: one of
// letters, digits, '.', '_' and '-', 1 to 128 of them, not starting with
// '.'.
func ValidSnapshotName(name string) error {
	if name == "" || len(name) > maxSnapshotName || name[0] == '.' {
		return fmt.Errorf("snapshot name %q: want 1 to %d letters, digits, '.', '_' or '-', not starting with '.'", name, maxSnapshotName)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("snapshot name %q: %q is not allowed (letters, digits, '.', '_' and '-' are)", name, c)
		}
	}
	return nil
}
