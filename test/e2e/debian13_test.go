package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/nbdd/nbdd/protocol"
)

// The tests in this file drive nbdd with Debian 13's peers, the newest a
// user gets from Debian (libnbd 1.22: nbdinfo, nbdcopy, nbdsh; qemu 10:
// qemu-img, qemu-io, qemu-nbd; fio 3.39), which run in a root made by
// test/debian13/make-root.sh. useTrixie puts wrappers for them first on
// PATH, so the harness's helpers (nbdinfo, nbdsh, fio, command) run them
// unchanged.
//
//	TestTrixieVersions           the wrappers run Debian 13's versions
//	TestTrixieNBDInfo            nbdinfo --json and --map: size, flags, contexts, extents
//	TestTrixieNBDCopy            nbdcopy in at default parallelism, out serially (-C1 -R1), on unix and TCP
//	TestTrixieQEMU               qemu-img convert and compare, qemu-io patterns across 4 GiB
//	TestTrixieFIO                fio nbd engine, verify=crc32c at iodepth 32
//	TestTrixieNBDSh              testdata/aio.py under nbdsh 1.22
//	TestTrixieExtendedHeaders    64-bit TRIM, WRITE_ZEROES and BLOCK_STATUS in one request each; compact headers when refused
//	TestTrixieDifferentialQEMUNBD the same 64-bit session against qemu-nbd 10 and nbdd: same bytes, compatible extents

// trixieTools are the programs useTrixie wraps.
var trixieTools = []string{"nbdinfo", "nbdcopy", "nbdsh", "qemu-img", "qemu-io", "qemu-nbd", "fio", "nbdkit"}

var trixie struct {
	once sync.Once
	root string // "" when it could not be had
	err  error  // why not
	skip bool   // the reason allows a skip (outside CI)
}

// trixieRoot makes (or finds in its cache) the Debian 13 root, once per
// test binary. Outside CI a root that cannot be had skips the test; in CI
// it fails it: .ci/run makes the root before the tests run.
func trixieRoot(t *testing.T) string {
	t.Helper()
	trixie.once.Do(func() {
		if os.Geteuid() != 0 {
			trixie.err, trixie.skip = errors.New("the Debian 13 root needs root (debootstrap, chroot)"), true
			return
		}
		script, err := filepath.Abs("../debian13/make-root.sh")
		if err != nil {
			trixie.err = err
			return
		}
		cmd := exec.Command(script)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit) && exit.ExitCode() == 77:
			trixie.err, trixie.skip = fmt.Errorf("make-root.sh: %s", strings.TrimSpace(stderr.String())), true
		case err != nil:
			trixie.err = fmt.Errorf("make-root.sh: %v: %s", err, stderr.String())
		default:
			trixie.root = strings.TrimSpace(string(out))
		}
	})
	if trixie.root == "" {
		if trixie.skip && os.Getenv("CI") == "" {
			t.Skipf("no Debian 13 root: %v", trixie.err)
		}
		t.Fatalf("no Debian 13 root: %v", trixie.err)
	}
	return trixie.root
}

// useTrixie puts wrappers for Debian 13's tools first on PATH for the rest
// of t. Each runs the tool in the root (test/debian13/run) in the caller's
// working directory, with the caller's environment except the variables
// that describe the host's own installation (PATH, python's and the
// dynamic linker's), and sees the host's /tmp, /dev/shm and this
// package's testdata at the same paths.
func useTrixie(t *testing.T) {
	t.Helper()
	root := trixieRoot(t)
	run, err := filepath.Abs("../debian13/run")
	if err != nil {
		t.Fatal(err)
	}
	testdata, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tool := range trixieTools {
		script := fmt.Sprintf(`#!/usr/bin/env bash
vars=()
while IFS= read -r -d '' kv; do
	case ${kv%%%%=*} in
	PATH | HOME | PWD | OLDPWD | SHLVL | _ | LD_* | PYTHON* | PYENV* | LANG | LC_* | TMPDIR) ;;
	*) vars+=("$kv") ;;
	esac
done < <(env -0)
exec %q %q --bind %q --bind %q --cwd "$PWD" -- "${vars[@]}" %s "$@"
`, run, root, testdata, os.TempDir(), tool)
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// TestTrixieVersions checks that useTrixie's wrappers run the versions
// Debian 13 ships, not the host's.
func TestTrixieVersions(t *testing.T) {
	useTrixie(t)
	tests := []struct{ tool, arg, want string }{
		{"nbdinfo", "--version", "nbdinfo 1.22."},
		{"nbdcopy", "--version", "nbdcopy 1.22."},
		{"nbdsh", "--version", "nbdsh 1.22."},
		{"qemu-img", "--version", "qemu-img version 10."},
		{"qemu-io", "--version", "qemu-io version 10."},
		{"qemu-nbd", "--version", "qemu-nbd 10."},
		{"fio", "--version", "fio-3.39"},
		{"nbdkit", "--version", "nbdkit 1.42."},
	}
	for _, tt := range tests {
		out := command{name: tt.tool, args: []string{tt.arg}, env: pythonEnv()}.run(t)
		if !strings.HasPrefix(out, tt.want) {
			t.Errorf("%s %s: %q; want it to start with %q", tt.tool, tt.arg, firstLine(out), tt.want)
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// trixieInfo is nbdinfo 1.22's --json output, with the fields older
// versions lack.
type trixieInfo struct {
	nbdinfoJSON
	Extended bool `json:"extended"`
}

// TestTrixieNBDInfo checks what nbdinfo 1.22 sees of a memory export, and
// its map of a partly written one.
func TestTrixieNBDInfo(t *testing.T) {
	useTrixie(t)
	s := startNBDD(t, "--memory", "disk=1G")
	uri := s.unixURI(t, "disk")
	var info trixieInfo
	out := command{name: "nbdinfo", args: []string{"--json", uri}}.run(t)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %d exports; want 1", len(info.Exports))
	}
	e := info.Exports[0]
	if e.Size != 1<<30 || !info.Structured || e.IsReadOnly || !e.CanFlush || !e.CanTrim || !e.CanZero || !e.CanMultiConn {
		t.Errorf("nbdinfo 1.22: %+v; want 1 GiB, structured, writable, flush, trim, zero, multi-conn", info)
	}
	if len(e.Contexts) != 1 || e.Contexts[0] != protocol.MetaContextBaseAllocation {
		t.Errorf("nbdinfo 1.22: contexts %q; want [base:allocation]", e.Contexts)
	}
	if !info.Extended {
		t.Errorf("nbdinfo 1.22: extended headers not negotiated")
	}

	command{name: "nbdsh", env: pythonEnv(), args: []string{"-u", uri, "-c", "h.pwrite(b'x' * 65536, 1 << 20)"}}.run(t)
	got := command{name: "nbdinfo", args: []string{"--map", uri}}.run(t)
	want := regexp.MustCompile(`(?m)^\s*0\s+1048576\s+3\s+hole,zero\n\s*1048576\s+65536\s+0\s+data\n\s*1114112\s+1072627712\s+3\s+hole,zero\s*$`)
	if !want.MatchString(got) {
		t.Errorf("nbdinfo --map:\n%s\nwant a hole, 64 KiB of data at 1 MiB, a hole", got)
	}
}

// TestTrixieNBDCopy copies the random image into nbdd with nbdcopy 1.22
// at its default parallelism and back out serially (one connection, one
// request in flight: the serial rows of bench/compare.sh), on the unix
// socket and on TCP, and compares the bytes.
func TestTrixieNBDCopy(t *testing.T) {
	useTrixie(t)
	src := randomImage(t)
	s := startNBDD(t, "--memory", "disk=256M", "--listen", "tcp://127.0.0.1:0")
	for _, uri := range []string{s.unixURI(t, "disk"), s.tcpURI(t, "disk")} {
		back := filepath.Join(t.TempDir(), "back.img")
		in := timed(func() { command{name: "nbdcopy", args: []string{"--flush", src, uri}}.run(t) })
		out := timed(func() { command{name: "nbdcopy", args: []string{"-C", "1", "-R", "1", uri, back}}.run(t) })
		requireSameFiles(t, src, back)
		os.Remove(back)
		t.Logf("nbdcopy 1.22 %s: write %.0f MB/s, serial read %.0f MB/s", uri[:strings.Index(uri, ":")], mbps(imageSize, in), mbps(imageSize, out))
	}
}

// TestTrixieQEMU copies the random image into a file export with
// qemu-img 10 and back, has qemu-img compare them, and writes and checks
// qemu-io 10 patterns at unaligned offsets of a 5 GiB memory export, one
// across 4 GiB and one ending at the export's end.
func TestTrixieQEMU(t *testing.T) {
	useTrixie(t)
	src := randomImage(t)
	img := sparseFile(t, t.TempDir(), imageSize)
	s := startNBDD(t, "--export", "disk="+img, "--memory", "big=5G")
	uri := s.unixURI(t, "disk")
	back := filepath.Join(t.TempDir(), "back.img")
	command{name: "qemu-img", args: []string{"convert", "-n", "-f", "raw", "-O", "raw", src, uri}}.run(t)
	command{name: "qemu-img", args: []string{"convert", "-f", "raw", "-O", "raw", uri, back}}.run(t)
	requireSameFiles(t, src, back)
	out := command{name: "qemu-img", args: []string{"compare", "-f", "raw", "-F", "raw", src, uri}}.run(t)
	if !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img 10 compare: %q; want \"Images are identical\"", out)
	}

	ops := []struct{ pattern, off, n string }{
		{"0xab", "1000", "5000"},
		{"0x5c", "4294966000", "131073"}, // across 4 GiB
		{"0x42", "5368705024", "4096"},   // ends at the export's end
	}
	var args []string
	for _, op := range ops {
		args = append(args, "-c", "write -P "+op.pattern+" "+op.off+" "+op.n)
	}
	for _, op := range ops {
		args = append(args, "-c", "read -P "+op.pattern+" "+op.off+" "+op.n)
	}
	args = append(args, "-c", "read -P 0 0 1000", "-c", "read -P 0 4295097073 4096", "-f", "raw", s.unixURI(t, "big"))
	checkQEMUIO(t, command{name: "qemu-io", args: args}.run(t), 2*len(ops)+2)
}

// TestTrixieFIO writes 4 KiB random blocks and 1 MiB sequential ones with
// fio 3.39's nbd engine at iodepth 32, with crc32c in every block, and
// verifies them, on a preallocated memory export (whose first writes take
// chunks from its free list).
func TestTrixieFIO(t *testing.T) {
	useTrixie(t)
	s := startNBDD(t, "--memory", "disk=64M,prealloc")
	fioVerify(t, s.unixURI(t, "disk"))
}

// TestTrixieNBDSh runs testdata/aio.py (64 concurrent aio reads and
// writes, flush, trim and zero in flight, checked against a model) under
// nbdsh 1.22.
func TestTrixieNBDSh(t *testing.T) {
	useTrixie(t)
	s := startNBDD(t, "--memory", "disk=64M")
	nbdsh(t, s.unixURI(t, "disk"), "aio.py", "SEED=22")
}

// ext64Result is what testdata/ext64.py prints after RESULT.
type ext64Result struct {
	Extended       bool              `json:"extended"`
	Mutations      int               `json:"mutations"`
	StatusRequests int               `json:"status_requests"`
	Hashes         map[string]string `json:"hashes"`
	Extents        [][3]uint64       `json:"extents"`
}

// ext64 runs testdata/ext64.py under nbdsh against uri, with extended
// headers unless noExt, and returns its result.
func ext64(t *testing.T, uri string, noExt bool) ext64Result {
	t.Helper()
	env := []string{"URI=" + uri}
	if noExt {
		env = append(env, "NO_EXT=1")
	}
	args := nbdshArgs(t, uri, "ext64.py")[2:] // the script connects itself
	out := command{name: "nbdsh", env: pythonEnv(env...), args: args}.run(t)
	i := strings.Index(out, "RESULT ")
	if i < 0 || !regexp.MustCompile(`(?m)^OK$`).MatchString(out) {
		t.Fatalf("ext64.py against %s:\n%s", uri, out)
	}
	var r ext64Result
	line := out[i+len("RESULT "):]
	if err := json.Unmarshal([]byte(line[:strings.IndexByte(line, '\n')]), &r); err != nil {
		t.Fatalf("ext64.py result: %v\n%s", err, out)
	}
	return r
}

// ext64Data are the ranges ext64.py leaves holding data, which every
// server's extents must report as data (not NBD_STATE_ZERO).
var ext64Data = [][2]uint64{{0, 64 << 10}, {4 << 30, 32 << 10}, {8<<30 - 64<<10, 64 << 10}}

// checkExtents fails t unless r's extents report every range of ext64Data
// as data.
func checkExtents(t *testing.T, who string, r ext64Result) {
	t.Helper()
	for _, d := range ext64Data {
		for _, e := range r.Extents {
			if e[0] < d[0]+d[1] && d[0] < e[0]+e[1] && e[2]&uint64(protocol.StateZero) != 0 {
				t.Errorf("%s: extent %v claims zeroes over the data at %d+%d", who, e, d[0], d[1])
			}
		}
	}
}

// TestTrixieExtendedHeaders checks that libnbd 1.22 negotiates extended
// headers with nbdd and uses them: the 3 GiB WRITE_ZEROES and the TRIM of
// more than 1 GiB go out as one request each (7 requests for the session's
// writes, zero, trim and flush), one BLOCK_STATUS covers the 8 GiB
// export, and the bytes and extents are right. The same session with
// extended headers refused by the client, in compact requests of at most
// 1 GiB, shows what the counts would be without them (10 requests, 8
// BLOCK_STATUS), and gives the same bytes.
func TestTrixieExtendedHeaders(t *testing.T) {
	useTrixie(t)
	for _, noExt := range []bool{false, true} {
		s := startNBDD(t, "--memory", "disk=8G")
		r := ext64(t, s.unixURI(t, "disk"), noExt)
		want := ext64Result{Extended: true, Mutations: 7, StatusRequests: 1}
		if noExt {
			want = ext64Result{Extended: false, Mutations: 10, StatusRequests: 8}
		}
		if r.Extended != want.Extended || r.Mutations != want.Mutations || r.StatusRequests != want.StatusRequests {
			t.Errorf("libnbd 1.22 against nbdd (client refuses extended headers: %t): extended %t, %d requests for the writes, zero, trim and flush, %d BLOCK_STATUS; want %t, %d, %d",
				noExt, r.Extended, r.Mutations, r.StatusRequests, want.Extended, want.Mutations, want.StatusRequests)
		}
		checkExtents(t, "nbdd", r)
	}
}

// TestTrixieDifferentialQEMUNBD runs testdata/ext64.py against qemu-nbd
// 10 and nbdd, each on a sparse 8 GiB export, and compares: the same
// bytes, extents that both report the written data as data, and on both
// extended headers negotiated and used (the same requests).
func TestTrixieDifferentialQEMUNBD(t *testing.T) {
	useTrixie(t)
	dir := t.TempDir()
	img := sparseFile(t, dir, 8<<30)
	sock := filepath.Join(dir, "qemu.sock")
	qemu := exec.Command("qemu-nbd", "-f", "raw", "-t", "--discard=unmap", "--cache=writeback", "-k", sock, img)
	qemu.Stderr = &syncBuffer{}
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Process.Kill(); qemu.Wait() })
	waitDial(t, "unix", sock, startTimeout)
	want := ext64(t, "nbd+unix:///?socket="+sock, false)
	if !want.Extended || want.Mutations != 7 {
		t.Fatalf("qemu-nbd 10: extended %t, %d requests; want true, 7", want.Extended, want.Mutations)
	}
	checkExtents(t, "qemu-nbd 10", want)

	s := startNBDD(t, "--memory", "disk=8G")
	got := ext64(t, s.unixURI(t, "disk"), false)
	checkExtents(t, "nbdd", got)
	for off, h := range want.Hashes {
		if got.Hashes[off] != h {
			t.Errorf("64 KiB at %s: nbdd sha256 %s; qemu-nbd 10 %s", off, got.Hashes[off], h)
		}
	}
	t.Logf("qemu-nbd 10: %d + %d requests; nbdd (extended %t): %d + %d", want.Mutations, want.StatusRequests, got.Extended, got.Mutations, got.StatusRequests)
	if !got.Extended || got.Mutations != want.Mutations {
		t.Errorf("nbdd: extended %t, %d requests; want true, %d as qemu-nbd 10", got.Extended, got.Mutations, want.Mutations)
	}
}
