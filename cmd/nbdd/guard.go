package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"syscall"

	"github.com/nbdd/nbdd/backend"
)

// imageSignatures are the headers of disk image formats, at their offsets,
// as qemu's block drivers probe them (block/*.c, *_probe). nbdd serves
// bytes as they are, so such an image served as a raw disk shows a client
// its container, and a client writing to it corrupts it.
var imageSignatures = []struct {
	format string
	off    int
	magic  string
}{
	{"qcow2", 0, "QFI\xfb"},              // also qcow version 1
	{"QED", 0, "QED\x00"},                // qemu's QED
	{"vmdk", 0, "KDMV"},                  // sparse extent
	{"vmdk", 0, "# Disk DescriptorFile"}, // text descriptor
	{"vhdx", 0, "vhdxfile"},              // file type identifier
	{"VHD (vpc)", 0, "conectix"},         // dynamic VHD: a copy of the footer first
	{"vdi", 0x40, "\x7f\x10\xda\xbe"},    // signature 0xbeda107f, little-endian
	{"LUKS", 0, "LUKS\xba\xbe"},          // LUKS1 and LUKS2 (cryptsetup)
}

// imageFormat returns the image format whose header starts hdr, or "".
func imageFormat(hdr []byte) string {
	for _, s := range imageSignatures {
		if len(hdr) >= s.off+len(s.magic) && string(hdr[s.off:s.off+len(s.magic)]) == s.magic {
			return s.format
		}
	}
	return ""
}

// guardExport checks an export's data before it is served as a raw disk:
// an image format's header refuses it unless raw says the data is meant
// as it is, and a size that is not a multiple of 512 is warned about (the
// kernel client cannot reach its last bytes). Every kind of export whose
// data may hold an image (files, block devices, S3 objects, overlays)
// calls it with its backend; what names the data in messages.
func guardExport(logger *slog.Logger, name, what string, b backend.Backend, raw bool) error {
	size, err := b.Size()
	if err != nil {
		return fmt.Errorf("export %s: size: %w", quoteShort(name), err)
	}
	if !raw {
		hdr := make([]byte, min(size, 4096))
		if _, err := b.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("export %s: reading the header of %s: %w", quoteShort(name), what, err)
		}
		if f := imageFormat(hdr); f != "" {
			return usage("export %s: %s is a %s image, not a raw disk: served as one, clients would see its container and a write would corrupt it; convert it (qemu-img convert -O raw), serve it with qemu-nbd, or add ,raw if the bytes are meant as they are", quoteShort(name), what, f)
		}
	}
	if size%512 != 0 {
		logger.Warn(fmt.Sprintf("export %s: size %d is not a multiple of 512: the kernel client (and some others) cannot reach the last %d bytes", quoteShort(name), size, size%512), "export", name, "size", size)
	}
	return nil
}

// openHint explains an open that failed because nbdd may not write the
// file of a writable export.
func openHint(err error, readOnly bool) string {
	switch {
	case readOnly:
	case errors.Is(err, fs.ErrPermission):
		return " (nbdd may not write it: add ,ro to export it read-only)"
	case errors.Is(err, syscall.EROFS):
		return " (it is on a read-only file system: add ,ro to export it read-only)"
	}
	return ""
}
