package main

import "github.com/urfave/cli/v2"

// localImages are images kept in local files: raw files and copy-on-write
// overlays over a read-only base.
type localImages struct{}

func (localImages) create(c *cli.Context, ref string, size int64) error {
	return errImageUnsupported("create", "local files")
}
func (localImages) info(c *cli.Context, ref string) (imageInfo, error) {
	return imageInfo{}, errImageUnsupported("info", "local files")
}
func (localImages) importFile(c *cli.Context, file, ref string) error {
	return errImageUnsupported("import", "local files")
}
func (localImages) exportFile(c *cli.Context, ref, file string) error {
	return errImageUnsupported("export", "local files")
}
func (localImages) gc(c *cli.Context, ref string) error {
	return errImageUnsupported("gc", "local files")
}
func (localImages) snapshot(c *cli.Context, ref, name string) error {
	return errImageUnsupported("snapshot", "local files")
}
func (localImages) clone(c *cli.Context, base, clone string) error {
	return errImageUnsupported("clone", "local files")
}
func (localImages) flatten(c *cli.Context, clone, out string) error {
	return errImageUnsupported("flatten", "local files")
}
