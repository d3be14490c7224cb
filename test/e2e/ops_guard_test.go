package e2e

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageGuards: an --export whose file is a qcow2, vmdk, vhdx, vdi, VHD
// or LUKS image (made by qemu-img) is refused in one line that says what
// it is and what to do, and served with ,raw; a size that is not a
// multiple of 512 is warned about.
func TestImageGuards(t *testing.T) {
	requireTool(t, "qemu-img")
	dir := t.TempDir()
	sock := "unix://" + filepath.Join(dir, "s")
	for _, tc := range []struct {
		format string
		opts   []string
		says   string
	}{
		{"qcow2", nil, "is a qcow2 image"},
		{"vmdk", nil, "is a vmdk image"},
		{"vhdx", nil, "is a vhdx image"},
		{"vdi", nil, "is a vdi image"},
		{"vpc", []string{"-o", "subformat=dynamic"}, "is a VHD (vpc) image"},
		{"luks", []string{"--object", "secret,id=s0,data=pw", "-o", "key-secret=s0,iter-time=10"}, "is a LUKS image"},
	} {
		t.Run(tc.format, func(t *testing.T) {
			img := filepath.Join(dir, "disk."+tc.format)
			args := append([]string{"create", "-q", "-f", tc.format}, tc.opts...)
			create := command{name: "qemu-img", args: append(args, img, "1M")}
			if out, err := create.try(t); err != nil {
				// qemu's LUKS key setup times PBKDF2 and on a busy machine
				// can fail ("Unable to get accurate CPU usage"): then a
				// LUKS1 header's first bytes (magic, version) stand in.
				if tc.format != "luks" {
					t.Fatalf("%s: %v\n%s", create, err, out)
				}
				t.Logf("%s: %v: %s; writing a LUKS1 header by hand", create, err, out)
				if err := os.WriteFile(img, append([]byte("LUKS\xba\xbe\x00\x01"), make([]byte, 1<<20)...), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, stderr, status := runNBDD(t, nil, "serve", "--listen", sock, "--export", "d="+img)
			if status != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.says) || !strings.Contains(stderr, ",raw") {
				t.Errorf("--export of a %s image: status %d, stderr %q; want 2 and one line saying %q and naming ,raw", tc.format, status, stderr, tc.says)
			}
		})
	}
	img := filepath.Join(dir, "disk.qcow2")
	s := startNBDD(t, "--export", "d="+img+",raw,ro")
	c := dialRaw(t, s.sock, "d")
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	readBack(t, c, 0, want[:4096], "qcow2 file served with ,raw")

	odd := filepath.Join(dir, "odd.img")
	if err := os.WriteFile(odd, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	s = startNBDD(t, "--export", "odd="+odd, "--memory", "m=100")
	for _, want := range []string{`export \"odd\": size 1000 is not a multiple of 512`, `export \"m\": size 100 is not a multiple of 512`} {
		if !s.stderr.waitFor(want, startTimeout) {
			t.Errorf("no warning %q in the log:\n%s", want, s.stderr)
		}
	}
}

// TestReadOnlyHint: a writable export of a file nbdd may not write fails
// with a hint to add ,ro (run as an unprivileged user: root may write any
// file).
func TestReadOnlyHint(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	bin, prefix := nbddBin, []string(nil)
	if os.Getuid() == 0 {
		requireTool(t, "setpriv")
		bin = filepath.Join(dir, "nbdd") // a copy that nobody may run
		copyFile(t, nbddBin, bin, 0o755)
		prefix = []string{"--reuid=65534", "--regid=65534", "--clear-groups", bin}
		bin = "setpriv"
	}
	// The socket goes where the unprivileged user may create it: nbdd
	// listens before it opens its exports, so a socket it may not create
	// would fail first.
	sdir, err := os.MkdirTemp(shortTempDir(), "rohint")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })
	if err := os.Chmod(sdir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := "unix://" + filepath.Join(sdir, "s")
	cmd := exec.Command(bin, append(prefix, "serve", "--listen", sock, "--export", "d="+img)...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied (nbdd may not write it: add ,ro to export it read-only)") {
		t.Errorf("writable export of a read-only file: %v, %q; want a failure with the ,ro hint", err, out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
