package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// imageCommand groups the commands that work on images at rest, local
// files and S3 images alike, named as qemu-img and rbd name theirs. An
// image is named by a REF: a file path, or s3://BUCKET/PREFIX for an S3
// image (with @SNAPSHOT for a sealed snapshot of one).
func imageCommand() *cli.Command {
	return &cli.Command{
		Name:      "image",
		Usage:     "create, inspect, copy, snapshot and clone images (files or s3://BUCKET/PREFIX)",
		UsageText: "nbdd image COMMAND [options] REF...",
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create an empty image of --size bytes", ArgsUsage: "REF",
				Flags: []cli.Flag{&cli.StringFlag{Name: "size", Usage: "image `SIZE` (K, M, G, T: powers of 1024)", Required: true}},
				Action: imageAction(1, func(c *cli.Context, st imageStore, refs []string) error {
					size, err := parseSize(c.String("size"))
					if err != nil {
						return usage("--size: %v", err)
					}
					return st.create(c, refs[0], size)
				}),
			},
			{
				Name: "info", Usage: "print what an image is: size, allocation, base, writer", ArgsUsage: "REF",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: imageAction(1, func(c *cli.Context, st imageStore, refs []string) error {
					info, err := st.info(c, refs[0])
					if err != nil {
						return err
					}
					return printImageInfo(c, info)
				}),
			},
			{
				Name: "import", Usage: "copy a raw FILE into a new image REF", ArgsUsage: "FILE REF",
				Action: imageAction(2, func(c *cli.Context, st imageStore, refs []string) error {
					return st.importFile(c, refs[0], refs[1])
				}),
			},
			{
				Name: "export", Usage: "copy image REF out to a raw FILE", ArgsUsage: "REF FILE",
				Action: imageAction(2, func(c *cli.Context, st imageStore, refs []string) error {
					return st.exportFile(c, refs[0], refs[1])
				}),
			},
			{
				Name: "gc", Usage: "reclaim the space of overwritten data", ArgsUsage: "REF",
				Flags: []cli.Flag{&cli.DurationFlag{Name: "grace", Usage: "keep objects that readers opened before may still use for `DURATION` (S3)"}},
				Action: imageAction(1, func(c *cli.Context, st imageStore, refs []string) error {
					return st.gc(c, refs[0])
				}),
			},
			{
				Name: "snapshot", Usage: "seal a read-only snapshot NAME of an image", ArgsUsage: "REF NAME",
				Action: imageAction(2, func(c *cli.Context, st imageStore, refs []string) error {
					return st.snapshot(c, refs[0], refs[1])
				}),
			},
			{
				Name: "clone", Usage: "create a copy-on-write image CLONE over a read-only BASE", ArgsUsage: "BASE CLONE",
				Flags: []cli.Flag{&cli.StringFlag{Name: "block-size", Usage: "copy-on-write block `SIZE` of a local overlay, 4KiB to 1MiB (default 4KiB)"}},
				Action: imageAction(2, func(c *cli.Context, st imageStore, refs []string) error {
					return st.clone(c, refs[0], refs[1])
				}),
			},
			{
				Name: "flatten", Usage: "write a clone out as a standalone image", ArgsUsage: "CLONE OUT",
				Action: imageAction(2, func(c *cli.Context, st imageStore, refs []string) error {
					return st.flatten(c, refs[0], refs[1])
				}),
			},
			imageRemoveCommand(),
		},
	}
}

// imageStore is what one kind of image store does for the image
// commands. A store answers errImageUnsupported for what it cannot do.
type imageStore interface {
	create(c *cli.Context, ref string, size int64) error
	info(c *cli.Context, ref string) (imageInfo, error)
	importFile(c *cli.Context, file, ref string) error
	exportFile(c *cli.Context, ref, file string) error
	gc(c *cli.Context, ref string) error
	snapshot(c *cli.Context, ref, name string) error
	clone(c *cli.Context, base, clone string) error
	flatten(c *cli.Context, clone, out string) error
}

// imageInfo is what image info prints. Fields that do not apply to a kind
// of image are left zero and omitted.
type imageInfo struct {
	Ref            string `json:"ref"`
	Kind           string `json:"kind"` // "raw", "overlay", "s3"
	Size           int64  `json:"size"`
	AllocatedBytes int64  `json:"allocated_bytes"`
	Base           string `json:"base,omitempty"`
	// Details are kind-specific facts (segments, writer epoch, ...), in
	// the order they are printed.
	Details []infoField `json:"details,omitempty"`
}

type infoField struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

func printImageInfo(c *cli.Context, info imageInfo) error {
	w := c.App.Writer
	if c.Bool("json") {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	fmt.Fprintf(w, "image: %s\nkind: %s\nsize: %s (%d bytes)\nallocated: %s (%d bytes)\n",
		info.Ref, info.Kind, formatSize(info.Size), info.Size, formatSize(info.AllocatedBytes), info.AllocatedBytes)
	if info.Base != "" {
		fmt.Fprintf(w, "base: %s\n", info.Base)
	}
	for _, f := range info.Details {
		fmt.Fprintf(w, "%s: %v\n", f.Key, f.Value)
	}
	return nil
}

// imageAction checks that the command got exactly n arguments, picks the
// store from the first S3 reference among them (a local file otherwise),
// and runs f.
func imageAction(n int, f func(c *cli.Context, st imageStore, refs []string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() != n {
			return usage("image %s takes %s (got %d arguments)", c.Command.Name, c.Command.ArgsUsage, c.NArg())
		}
		refs := c.Args().Slice()
		return f(c, storeFor(refs), refs)
	}
}

// storeFor picks the store of the first S3 reference in refs, or the
// local one.
func storeFor(refs []string) imageStore {
	for _, r := range refs {
		if isS3Ref(r) {
			return s3Images{}
		}
	}
	return localImages{}
}

func isS3Ref(ref string) bool { return strings.HasPrefix(ref, "s3://") }

// errImageUnsupported says that a kind of image has no such command.
func errImageUnsupported(cmd, kind string) error {
	return cli.Exit(fmt.Sprintf("image %s: not supported for %s", cmd, kind), 2)
}
