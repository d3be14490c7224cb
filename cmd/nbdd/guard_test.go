package main

import (
	"errors"
	"io/fs"
	"syscall"
	"testing"
)

func TestImageFormat(t *testing.T) {
	vdi := make([]byte, 512)
	copy(vdi, "<<< Oracle VM VirtualBox Disk Image >>>\n")
	copy(vdi[0x40:], "\x7f\x10\xda\xbe")
	for _, tc := range []struct {
		hdr  []byte
		want string
	}{
		{[]byte("QFI\xfb\x00\x00\x00\x03"), "qcow2"},
		{[]byte("KDMV\x01\x00\x00\x00"), "vmdk"},
		{[]byte("# Disk DescriptorFile\nversion=1\n"), "vmdk"},
		{[]byte("vhdxfile\x00\x00"), "vhdx"},
		{[]byte("conectix\x00\x00\x00\x02"), "VHD (vpc)"},
		{vdi, "vdi"},
		{[]byte("LUKS\xba\xbe\x00\x02"), "LUKS"},
		{[]byte("QED\x00"), "QED"},
		{make([]byte, 4096), ""},
		{[]byte("\xebc\x90GRUB"), ""}, // an MBR is a raw disk
		{[]byte("QFI"), ""},           // shorter than a signature
		{nil, ""},
	} {
		if got := imageFormat(tc.hdr); got != tc.want {
			t.Errorf("imageFormat(%q) = %q; want %q", tc.hdr[:min(len(tc.hdr), 12)], got, tc.want)
		}
	}
}

func TestOpenHint(t *testing.T) {
	perm := &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}
	rofs := &fs.PathError{Op: "open", Path: "/x", Err: syscall.EROFS}
	for _, tc := range []struct {
		err  error
		ro   bool
		want string
	}{
		{perm, false, " (nbdd may not write it: add ,ro to export it read-only)"},
		{rofs, false, " (it is on a read-only file system: add ,ro to export it read-only)"},
		{perm, true, ""},
		{errors.New("other"), false, ""},
	} {
		if got := openHint(tc.err, tc.ro); got != tc.want {
			t.Errorf("openHint(%v, ro=%v) = %q; want %q", tc.err, tc.ro, got, tc.want)
		}
	}
}
