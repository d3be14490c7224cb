package e2e

// Directory exports: nbdd serve --dir exports the files of a
// directory by name, picks up files added later, and refuses every name
// that would reach outside it. Helpers of this file carry the prefix p5.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

// p5startDir runs nbdd serve --dir dir on a unix socket. nbdd announces a
// directory with one "files of" line, not one line per export, so this
// waits for the socket instead.
func p5startDir(t *testing.T, dir string, args ...string) *nbdd {
	t.Helper()
	sdir, err := os.MkdirTemp(shortTempDir(), "p5dir")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })
	sock := filepath.Join(sdir, "s")
	s := launchNBDD(t, nil, append([]string{"serve", "--listen", "unix://" + sock, "--dir", dir}, args...), 0)
	s.sock = sock
	waitDial(t, "unix", sock, startTimeout)
	return s
}

func p5dirURI(s *nbdd, name string) string {
	return "nbd+unix:///" + url.PathEscape(name) + "?socket=" + s.sock
}

// p5optReply is one option reply.
type p5optReply struct {
	typ  protocol.Rep
	data []byte
}

// p5exportOption sends opt (NBD_OPT_INFO or NBD_OPT_GO) for name, asking
// for every information type, and returns the replies up to the ACK or
// the first error. After an error it sends NBD_OPT_ABORT.
func p5exportOption(t *testing.T, sock string, opt protocol.Opt, name string) []p5optReply {
	t.Helper()
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	var greet [protocol.HandshakeSize]byte
	if _, err := io.ReadFull(br, greet[:]); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	data := protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: name,
		Infos: []protocol.Info{protocol.InfoExport, protocol.InfoName, protocol.InfoDescription, protocol.InfoBlockSize}})
	msg := binary.BigEndian.AppendUint32(nil, uint32(protocol.ClientFixedNewstyle|protocol.ClientNoZeroes))
	var hdr [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: opt, Length: uint32(len(data))}.Put(&hdr)
	msg = append(append(msg, hdr[:]...), data...)
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("write %v: %v", opt, err)
	}
	var replies []p5optReply
	for {
		var rh [protocol.OptionReplyHeaderSize]byte
		if _, err := io.ReadFull(br, rh[:]); err != nil {
			t.Fatalf("%v %q: reading a reply after %d: %v", opt, name, len(replies), err)
		}
		r, err := protocol.DecodeOptionReplyHeader(&rh)
		if err != nil {
			t.Fatal(err)
		}
		if r.Opt != opt {
			t.Fatalf("reply to %v; want one to %v", r.Opt, opt)
		}
		payload := make([]byte, min(r.Length, 1<<16))
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatalf("read %v payload: %v", r.Type, err)
		}
		replies = append(replies, p5optReply{r.Type, payload})
		if r.Type == protocol.RepAck || r.Type.IsError() {
			break
		}
	}
	if replies[len(replies)-1].typ.IsError() || opt == protocol.OptInfo {
		protocol.OptionHeader{Opt: protocol.OptAbort}.Put(&hdr)
		conn.Write(hdr[:])
	}
	return replies
}

// p5requireServed checks that export name of s has the size and the bytes
// of the file at path (nbdinfo, then nbdcopy into a file).
func p5requireServed(t *testing.T, s *nbdd, name, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	info := nbdinfo(t, p5dirURI(s, name))
	if len(info.Exports) != 1 || info.Exports[0].Size != fi.Size() {
		t.Fatalf("nbdinfo %s: %+v; want one export of %d bytes", name, info.Exports, fi.Size())
	}
	back := filepath.Join(t.TempDir(), "back.img")
	command{name: "nbdcopy", args: []string{p5dirURI(s, name), back}}.run(t)
	requireSameFiles(t, path, back)
}

// TestDirExports serves a directory: its files by name (a symlink that
// stays inside too), a file added after start, and for every name that
// would leave the directory — "../", an absolute path, symlinks out (by a
// relative and by an absolute target), a subdirectory path, a NUL byte —
// the very refusal an unknown name gets, with nothing about the target.
func TestDirExports(t *testing.T) {
	requireTool(t, "nbdinfo")
	requireTool(t, "nbdcopy")
	top := t.TempDir()
	dir, outside := filepath.Join(top, "exports"), filepath.Join(top, "outside")
	for _, d := range []string{dir, outside, filepath.Join(dir, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(outside, "secret.img")
	if err := os.WriteFile(secret, []byte(strings.Repeat("TOP SECRET ", 6000)), 0o644); err != nil {
		t.Fatal(err)
	}
	aImg := filepath.Join(dir, "a.img")
	if err := writeRandomFile(aImg, 1<<20, 51); err != nil {
		t.Fatal(err)
	}
	if err := writeRandomFile(filepath.Join(dir, "b.img"), 512<<10, 52); err != nil {
		t.Fatal(err)
	}
	if err := writeRandomFile(filepath.Join(dir, "sub", "c.img"), 64<<10, 53); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"inside":    "a.img",
		"escape":    "../outside/secret.img",
		"absescape": secret,
		"dirlink":   "../outside",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	s := p5startDir(t, dir)

	t.Run("list", func(t *testing.T) {
		names := p5listNames(t, p5dirURI(s, ""))
		t.Logf("nbdinfo --list: %v", names)
		for _, want := range []string{"a.img", "b.img"} {
			if !slices.Contains(names, want) {
				t.Errorf("nbdinfo --list %v lacks %s", names, want)
			}
		}
		for _, bad := range []string{"escape", "absescape", "dirlink", "sub", "secret.img"} {
			if slices.Contains(names, bad) {
				t.Errorf("nbdinfo --list %v shows %s, which is not a regular file inside the directory", names, bad)
			}
		}
	})

	t.Run("read", func(t *testing.T) {
		p5requireServed(t, s, "a.img", aImg)
		p5requireServed(t, s, "inside", aImg) // a symlink inside serves its target
	})

	t.Run("added-later", func(t *testing.T) {
		later := filepath.Join(dir, "later.img")
		if err := writeRandomFile(later, 3<<20, 54); err != nil {
			t.Fatal(err)
		}
		if names := p5listNames(t, p5dirURI(s, "")); !slices.Contains(names, "later.img") {
			t.Errorf("nbdinfo --list after adding later.img: %v; want it listed", names)
		}
		p5requireServed(t, s, "later.img", later)
	})

	t.Run("refused", func(t *testing.T) {
		// The refusal of a name that is simply absent, with the name cut
		// out: every bad name must get exactly this.
		norm := func(replies []p5optReply, name string) string {
			var parts []string
			for _, r := range replies {
				parts = append(parts, fmt.Sprintf("%v %s", r.typ, strings.ReplaceAll(string(r.data), strconv.Quote(name), "NAME")))
			}
			return strings.Join(parts, "; ")
		}
		control := norm(p5exportOption(t, s.sock, protocol.OptGo, "nosuch.img"), "nosuch.img")
		if !strings.HasPrefix(control, protocol.RepErrUnknown.String()+" ") {
			t.Fatalf("NBD_OPT_GO for an absent file: %s; want %v", control, protocol.RepErrUnknown)
		}
		t.Logf("absent file: %s", control)
		uriNames := []string{
			"../outside/secret.img",
			"..",
			"../exports/a.img", // back inside, still not a plain name
			secret,             // absolute, outside
			aImg,               // absolute, inside
			"escape",           // symlink out, relative target
			"absescape",        // symlink out, absolute target
			"dirlink/secret.img",
			"sub/c.img",
			"sub",
			"./a.img",
			".",
		}
		names := append(slices.Clone(uriNames),
			"a.img\x00",
			"a.img\x00../outside/secret.img",
			"\x00",
			"../outside/secret.img\x00a.img",
		)
		for _, name := range names {
			for _, opt := range []protocol.Opt{protocol.OptGo, protocol.OptInfo} {
				replies := p5exportOption(t, s.sock, opt, name)
				if got := norm(replies, name); got != control || len(replies) != 1 {
					t.Errorf("%v %q: %s; want exactly the refusal of an absent name: %s", opt, name, got, control)
				}
				for _, r := range replies { // beyond the echo of the name asked for
					if rest := strings.ReplaceAll(string(r.data), strconv.Quote(name), ""); strings.Contains(rest, "SECRET") || strings.Contains(rest, top) {
						t.Errorf("%v %q leaked %q", opt, name, r.data)
					}
				}
			}
		}
		for _, name := range uriNames {
			out := p5refused(t, command{name: "nbdinfo", args: []string{p5dirURI(s, name)}})
			if !strings.Contains(out, "No such file or directory") || strings.Contains(out, "export-size") {
				t.Errorf("nbdinfo %q: %s; want libnbd's unknown export error (ENOENT) and nothing else", name, out)
			}
		}
		if err := s.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("nbdd gone after the refusals: %v", err)
		}
		roundTrip := nbdinfo(t, p5dirURI(s, "b.img"))
		if len(roundTrip.Exports) != 1 || roundTrip.Exports[0].Size != 512<<10 {
			t.Errorf("nbdinfo b.img after the refusals: %+v", roundTrip.Exports)
		}
		data, err := os.ReadFile(secret)
		if err != nil || !strings.HasPrefix(string(data), "TOP SECRET ") {
			t.Errorf("the file outside changed: %v", err)
		}
	})
}

// TestDirWithholdsLoadFile: a file of a writable load export that turns
// up in a --dir directory after start (here a hard link) is not served
// from there, since the load export's copy would overwrite what a client
// wrote through the directory; the directory's other files still are.
func TestDirWithholdsLoadFile(t *testing.T) {
	requireTool(t, "nbdinfo")
	dir, elsewhere := t.TempDir(), t.TempDir()
	load := filepath.Join(elsewhere, "vm.img")
	if err := writeRandomFile(load, 1<<20, 7); err != nil {
		t.Fatal(err)
	}
	if err := writeRandomFile(filepath.Join(dir, "b.img"), 512<<10, 8); err != nil {
		t.Fatal(err)
	}
	s := p5startDir(t, dir, "--export", "vm="+load+",load")
	if err := os.Link(load, filepath.Join(dir, "vm-link.img")); err != nil {
		t.Fatal(err)
	}
	out := p5refused(t, command{name: "nbdinfo", args: []string{p5dirURI(s, "vm-link.img")}})
	if strings.Contains(out, "export-size") {
		t.Errorf("nbdinfo vm-link.img: %s; want it refused", out)
	}
	if !s.stderr.waitFor("withheld", stopTimeout) {
		t.Errorf("nbdd logged no refusal of vm-link.img:\n%s", s.stderr)
	}
	if info := nbdinfo(t, p5dirURI(s, "b.img")); len(info.Exports) != 1 || info.Exports[0].Size != 512<<10 {
		t.Errorf("nbdinfo b.img: %+v", info.Exports)
	}
}
