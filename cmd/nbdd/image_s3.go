package main

import "github.com/urfave/cli/v2"

// s3Images are images kept in an S3 bucket under a prefix.
type s3Images struct{}

func (s3Images) create(c *cli.Context, ref string, size int64) error {
	return errImageUnsupported("create", "S3 images")
}
func (s3Images) info(c *cli.Context, ref string) (imageInfo, error) {
	return imageInfo{}, errImageUnsupported("info", "S3 images")
}
func (s3Images) importFile(c *cli.Context, file, ref string) error {
	return errImageUnsupported("import", "S3 images")
}
func (s3Images) exportFile(c *cli.Context, ref, file string) error {
	return errImageUnsupported("export", "S3 images")
}
func (s3Images) gc(c *cli.Context, ref string) error {
	return errImageUnsupported("gc", "S3 images")
}
func (s3Images) snapshot(c *cli.Context, ref, name string) error {
	return errImageUnsupported("snapshot", "S3 images")
}
func (s3Images) clone(c *cli.Context, base, clone string) error {
	return errImageUnsupported("clone", "S3 images")
}
func (s3Images) flatten(c *cli.Context, clone, out string) error {
	return errImageUnsupported("flatten", "S3 images")
}
