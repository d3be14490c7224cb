package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cloneSize is the size of the bases of the clone tests.
const cloneSize = 64 << 20

// cloneBaseImage writes a base image of cloneSize bytes: random data with
// a 16 MiB hole at 16 MiB (sparse in the file), and returns its path and
// content.
func cloneBaseImage(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	path := filepath.Join(dir, "base.raw")
	if err := writeRandomFile(path, cloneSize, 19); err != nil {
		t.Fatal(err)
	}
	command{name: "fallocate", args: []string{"--punch-hole", "--offset", "16M", "--length", "16M", path}}.run(t)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, data
}

// fileSHA256 returns the hex SHA-256 of the file at path.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// qemuIO runs qemu-io commands against uri and fails on any failed
// pattern check, which qemu-io reports only in its output.
func qemuIO(t *testing.T, uri string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := command{name: "qemu-io", args: append(args, uri)}.run(t)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed:") {
		t.Fatalf("qemu-io %s:\n%s", strings.Join(cmds, "; "), out)
	}
}

// cloneWrites are the writes of the clone tests, and patch applies them
// to a copy of the base's content.
var cloneWrites = []struct {
	pattern byte
	off, n  int
}{
	{0x11, 1 << 20, 64 << 10},         // whole blocks over base data
	{0x22, 5<<20 + 512, 3000},         // part of one block: copied up from the base
	{0x33, 20 << 20, 4096},            // inside the base's hole
	{0x44, cloneSize - 5000, 5000},    // the end
	{0x55, 40<<20 - 100, 2<<20 + 200}, // unaligned at both ends
}

func writeClone(t *testing.T, uri string) {
	t.Helper()
	var cmds []string
	for _, w := range cloneWrites {
		cmds = append(cmds, fmt.Sprintf("write -P %#x %d %d", w.pattern, w.off, w.n))
	}
	qemuIO(t, uri, append(cmds, "flush")...)
}

func patched(base []byte) []byte {
	want := append([]byte(nil), base...)
	for _, w := range cloneWrites {
		for i := range w.n {
			want[w.off+i] = w.pattern
		}
	}
	return want
}

// readExport copies the whole export at uri into a file and returns its
// bytes.
func readExport(t *testing.T, uri string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	command{name: "nbdcopy", args: []string{uri, out}}.run(t)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func requireBytes(t *testing.T, got, want []byte, what string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes; want %d", what, len(got), len(want))
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: byte %d is %#x; want %#x", what, i, got[i], want[i])
	}
}

// TestCloneWritesOverlay: a clone reads its base where it has not
// written; its writes (aligned, partial blocks copied up, past the base's
// hole, at the end) read back, go to the overlay and leave the base's
// SHA-256 unchanged; and they survive a restart.
func TestCloneWritesOverlay(t *testing.T) {
	requireTool(t, "qemu-io")
	requireTool(t, "nbdcopy")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		// On disk, and in memory (/dev/shm), where a clone lends its
		// READs from mappings of its files.
		for where, dirOf := range map[string]func(*testing.T) string{"disk": func(t *testing.T) string { return t.TempDir() }, "shm": shmDir} {
			t.Run(where, func(t *testing.T) {
				dir := dirOf(t)
				base, data := cloneBaseImage(t, dir)
				sum := fileSHA256(t, base)
				spec := "vm=" + base + ",cow=" + filepath.Join(dir, "vm.ovl")
				s := startNBDD(t, "--strategy", strategy, "--export", spec)
				uri := s.unixURI(t, "vm")
				requireBytes(t, readExport(t, uri), data, "an unwritten clone")
				writeClone(t, uri)
				want := patched(data)
				requireBytes(t, readExport(t, uri), want, "the clone after its writes")
				s.stop(t)
				if got := fileSHA256(t, base); got != sum {
					t.Fatalf("the base's SHA-256 changed: %s; want %s", got, sum)
				}
				s2 := startNBDD(t, "--strategy", strategy, "--export", spec)
				requireBytes(t, readExport(t, s2.unixURI(t, "vm")), want, "the clone after a restart")
			})
		}
	})
}

// TestCloneKill9AfterFlush: a flushed write and a FUA write to a clone
// survive kill -9 of nbdd, read back through a new nbdd on the same
// overlay, and the base is unchanged (durable.py, as TestDurabilityKill9).
func TestCloneKill9AfterFlush(t *testing.T) {
	requireTool(t, "nbdsh")
	forEachStrategy(t, func(t *testing.T, strategy string) {
		dir := t.TempDir()
		base, _ := cloneBaseImage(t, dir)
		sum := fileSHA256(t, base)
		spec := "disk=" + base + ",cow=" + filepath.Join(dir, "vm.ovl")
		s := startNBDD(t, "--strategy", strategy, "--export", spec)
		writeAndHold(t, s.unixURI(t, "disk"), func() { s.kill(t) })
		s2 := launchNBDD(t, nil, []string{"serve", "--listen", "unix://" + s.sock, "--strategy", strategy, "--export", spec}, 1)
		nbdsh(t, s2.unixURI(t, "disk"), "durable.py", "MODE=verify", "SEED=3")
		if got := fileSHA256(t, base); got != sum {
			t.Fatalf("the base's SHA-256 changed: %s; want %s", got, sum)
		}
	})
}

// TestCloneTrimMasksBase: TRIM and WRITE_ZEROES over the base's data make
// the clone read zeroes there and report them as holes, after a restart
// too, while the base keeps its data.
func TestCloneTrimMasksBase(t *testing.T) {
	requireTool(t, "qemu-io")
	requireTool(t, "nbdinfo")
	dir := t.TempDir()
	base, data := cloneBaseImage(t, dir)
	spec := "vm=" + base + ",cow=" + filepath.Join(dir, "vm.ovl")
	s := startNBDD(t, "--export", spec)
	uri := s.unixURI(t, "vm")
	qemuIO(t, uri, "discard 33M 2M", "write -z 40M 1M", "flush")
	qemuIO(t, uri, "read -P 0 33M 2M", "read -P 0 40M 1M")
	requireZeroExtents(t, uri, [][2]int64{{33 << 20, 2 << 20}, {40 << 20, 1 << 20}})
	s.stop(t)
	if b, err := os.ReadFile(base); err != nil || firstDiff(b, data) >= 0 {
		t.Fatalf("the base changed (%v)", err)
	}
	s2 := startNBDD(t, "--export", spec)
	qemuIO(t, s2.unixURI(t, "vm"), "read -P 0 33M 2M", "read -P 0 40M 1M")
}

// requireZeroExtents wants every range reported as hole and zero by
// nbdinfo --map.
func requireZeroExtents(t *testing.T, uri string, ranges [][2]int64) {
	t.Helper()
	for _, e := range mapExtents(t, "nbdinfo", uri) {
		for _, r := range ranges {
			if e.start < r[0]+r[1] && r[0] < e.start+e.length && (e.data || !e.zero) {
				t.Errorf("extent %+v overlaps masked range %d+%d; want it hole and zero", e, r[0], r[1])
			}
		}
	}
}

// extent is one range of a block status map: data or not, zero or not.
type extent struct {
	start, length int64
	data, zero    bool
}

// mapExtents returns the map of uri (or an image file, for qemu-img) as
// tool reports it, neighbours with equal flags merged.
func mapExtents(t *testing.T, tool, target string) []extent {
	t.Helper()
	var raw []extent
	switch tool {
	case "nbdinfo":
		out := command{name: "nbdinfo", args: []string{"--map", target}}.run(t)
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) < 3 {
				continue
			}
			off, _ := strconv.ParseInt(f[0], 10, 64)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			ty, _ := strconv.Atoi(f[2])
			raw = append(raw, extent{off, n, ty&1 == 0, ty&2 != 0})
		}
	default: // qemu-img map --output=json
		args := []string{"map", "--output=json"}
		if strings.Contains(target, "://") {
			args = append(args, "-f", "raw")
		}
		out := command{name: "qemu-img", args: append(args, target)}.run(t)
		var m []struct {
			Start, Length int64
			Data, Zero    bool
		}
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("qemu-img map %s: %v\n%s", target, err, out)
		}
		for _, e := range m {
			raw = append(raw, extent{e.Start, e.Length, e.Data, e.Zero})
		}
	}
	var merged []extent
	for _, e := range raw {
		if k := len(merged) - 1; k >= 0 && merged[k].data == e.data && merged[k].zero == e.zero && merged[k].start+merged[k].length == e.start {
			merged[k].length += e.length
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// TestCloneBlockStatusMatchesQCOW2: the same writes, discards and zeroes
// applied to an nbdd clone and to a qcow2 overlay with the same base as
// its backing file (qemu-img create -f qcow2 -b base.raw -F raw) give the
// same map in qemu-img map, range by range, data and zero. The writes are
// 64 KiB-aligned wherever the base has a hole, since qcow2 allocates
// whole 64 KiB clusters.
func TestCloneBlockStatusMatchesQCOW2(t *testing.T) {
	requireTool(t, "qemu-img")
	requireTool(t, "qemu-io")
	dir := t.TempDir()
	base, _ := cloneBaseImage(t, dir)
	qcow := filepath.Join(dir, "vm.qcow2")
	command{name: "qemu-img", args: []string{"create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", qcow}}.run(t)
	s := startNBDD(t, "--export", "vm="+base+",cow="+filepath.Join(dir, "vm.ovl"))
	uri := s.unixURI(t, "vm")
	ops := []string{
		"write -P 0x5a 0 64k",       // over base data
		"write -P 0x5b 17M 128k",    // inside the base's hole: data
		"discard 33M 2M",            // over base data: masked
		"write -z 40M 1M",           // zeroes over base data
		"discard 20M 1M",            // inside the hole: still zero
		"write -P 0x5c 60M+4096 8k", // unaligned, over base data
		"write -P 0x5d 24M 64k",     // in the hole, then
		"discard 24M 64k",           // masked again
		"write -z 48M 3M",           // zeroes, then
		"write -P 0x5e 49M 64k",     // data inside them
	}
	for i, op := range ops {
		ops[i] = strings.Replace(op, "60M+4096", strconv.Itoa(60<<20+4096), 1)
	}
	qemuIO(t, uri, append(ops, "flush")...)
	args := []string{"-f", "qcow2"}
	for _, op := range ops {
		args = append(args, "-c", op)
	}
	command{name: "qemu-io", args: append(args, qcow)}.run(t)

	got, want := mapExtents(t, "qemu-img", uri), mapExtents(t, "qemu-img", qcow)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("qemu-img map of the clone:\n%v\nof the qcow2 chain:\n%v", got, want)
	}
	t.Logf("%d extents match: %v", len(got), got)
	// The data must match too.
	command{name: "qemu-img", args: []string{"compare", "-f", "raw", "-F", "qcow2", uri, qcow}}.run(t)
}

// TestCloneThrowAway: a snapshot (throw-away) clone takes writes and
// leaves nothing behind in $TMPDIR, while it runs, after SIGTERM and
// after kill -9; a new one reads the base again.
func TestCloneThrowAway(t *testing.T) {
	requireTool(t, "qemu-io")
	dir, tmp := t.TempDir(), t.TempDir()
	base, data := cloneBaseImage(t, dir)
	sum := fileSHA256(t, base)
	env := []string{"TMPDIR=" + tmp}
	args := []string{"serve", "--listen", "unix://" + filepath.Join(dir, "s"), "--export", "vm=" + base + ",snapshot"}
	requireEmpty := func(when string) {
		t.Helper()
		if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
			t.Fatalf("%s: $TMPDIR holds %v; want nothing", when, entries)
		}
	}
	for _, stop := range []string{"SIGTERM", "kill -9"} {
		s := launchNBDD(t, env, args, 1)
		uri := s.uri(t, "vm", "nbd+unix://")
		waitDial(t, "unix", filepath.Join(dir, "s"), startTimeout)
		qemuIO(t, uri, "read -P 0 16M 16M", "write -P 0x77 16M 1M", "write -P 0x78 1000 100", "flush", "read -P 0x77 16M 1M")
		requireEmpty("while serving")
		if stop == "SIGTERM" {
			s.stop(t)
		} else {
			s.kill(t)
		}
		requireEmpty("after " + stop)
	}
	s := launchNBDD(t, env, args, 1)
	waitDial(t, "unix", filepath.Join(dir, "s"), startTimeout)
	requireBytes(t, readExport(t, s.uri(t, "vm", "nbd+unix://")), data, "a new throw-away clone")
	if got := fileSHA256(t, base); got != sum {
		t.Fatalf("the base's SHA-256 changed")
	}
}

// TestManyClones: eight clones of one base in one nbdd, which opens the
// base once, each with its own writes at the same offset; a second nbdd
// serving another clone of the same base; and a third refused the overlay
// the first holds.
func TestManyClones(t *testing.T) {
	requireTool(t, "qemu-io")
	dir := t.TempDir()
	base, _ := cloneBaseImage(t, dir)
	sum := fileSHA256(t, base)
	var args []string
	for i := range 8 {
		args = append(args, "--export", fmt.Sprintf("vm%d=%s,cow=%s", i, base, filepath.Join(dir, fmt.Sprintf("vm%d.ovl", i))))
	}
	s := startNBDD(t, args...)
	for i := range 8 {
		qemuIO(t, s.unixURI(t, fmt.Sprintf("vm%d", i)), fmt.Sprintf("write -P %d 8M 1M", i+1), "flush")
	}
	for i := range 8 {
		qemuIO(t, s.unixURI(t, fmt.Sprintf("vm%d", i)), fmt.Sprintf("read -P %d 8M 1M", i+1))
	}
	if n := openCount(t, s.cmd.Process.Pid, base); n != 1 {
		t.Errorf("nbdd has the base open %d times; want once for its 8 clones", n)
	}

	other := startNBDD(t, "--export", "vm8="+base+",cow="+filepath.Join(dir, "vm8.ovl"))
	qemuIO(t, other.unixURI(t, "vm8"), "write -P 9 8M 1M", "read -P 9 8M 1M")
	qemuIO(t, s.unixURI(t, "vm0"), "read -P 1 8M 1M")

	_, stderr, status := runNBDD(t, nil, "serve", "--listen", "unix://"+filepath.Join(dir, "s3"),
		"--export", "again="+base+",cow="+filepath.Join(dir, "vm0.ovl"))
	if status != 1 || !strings.Contains(stderr, "in use") || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
		t.Errorf("a second writer of vm0.ovl: status %d, stderr %q; want 1 and one line saying it is in use", status, stderr)
	}
	s.stop(t)
	other.stop(t)
	if got := fileSHA256(t, base); got != sum {
		t.Fatalf("the base's SHA-256 changed")
	}
}

// openCount counts the descriptors of process pid open on path.
func openCount(t *testing.T, pid int, path string) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

// TestCloneCLIErrors: mistakes in clone exports get one line and a
// status, and start nothing.
func TestCloneCLIErrors(t *testing.T) {
	dir := t.TempDir()
	base, _ := cloneBaseImage(t, dir)
	otherBase := filepath.Join(dir, "other.raw")
	if err := writeRandomFile(otherBase, cloneSize, 5); err != nil {
		t.Fatal(err)
	}
	ovl := filepath.Join(dir, "vm.ovl")
	command{name: nbddBin, args: []string{"image", "clone", base, ovl}}.run(t)
	sock := "unix://" + filepath.Join(dir, "s")
	otherDir := t.TempDir()
	for _, tc := range []struct {
		name   string
		args   []string
		status int
		want   string
	}{
		{"cow and snapshot", []string{"--export", "a=" + base + ",cow=" + ovl + ",snapshot"}, 2, "pick one"},
		{"cow without a path", []string{"--export", "a=" + base + ",cow"}, 2, "needs a value"},
		{"direct clone", []string{"--export", "a=" + base + ",cow=" + ovl + ",direct"}, 2, "direct"},
		{"missing base", []string{"--export", "a=" + filepath.Join(dir, "nope.raw") + ",cow=" + ovl}, 2, "nope.raw"},
		{"overlay of another base", []string{"--export", "a=" + otherBase + ",cow=" + ovl}, 1, "not the image the overlay was made over"},
		{"overlay twice", []string{"--export", "a=" + base + ",cow=" + ovl, "--export", "b=" + base + ",cow=" + ovl}, 2, "overlay"},
		{"overlay exported raw", []string{"--export", "a=" + base + ",cow=" + ovl, "--export", "b=" + ovl}, 2, "overlay"},
		{"base exported writable", []string{"--export", "a=" + base + ",cow=" + ovl, "--export", "b=" + base}, 2, "base of a clone"},
		{"base in a writable --dir", []string{"--dir", dir, "--export", "a=" + base + ",cow=" + ovl}, 2, "base.raw"},
		{"new overlay in a writable --dir", []string{"--dir", otherDir, "--export", "a=" + base + ",cow=" + filepath.Join(otherDir, "new.ovl")}, 2, "new.ovl"},
		{"read-only clone without its overlay", []string{"--export", "a=" + base + ",cow=" + filepath.Join(dir, "none.ovl") + ",ro"}, 1, "none.ovl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, status := runNBDD(t, nil, append([]string{"serve", "--listen", sock}, tc.args...)...)
			if status != tc.status || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("status %d, stderr %q; want %d and one line containing %q", status, stderr, tc.status, tc.want)
			}
		})
	}
	// The base exported read-only next to its clones is fine.
	s := startNBDD(t, "--export", "a="+base+",cow="+ovl, "--export", "b="+base+",ro")
	s.stop(t)
}

// TestImageCommandsLocal: image create, clone, info, flatten and snapshot
// on local files, checked against what nbdd serves and against a
// directly computed image.
func TestImageCommandsLocal(t *testing.T) {
	requireTool(t, "qemu-io")
	requireTool(t, "nbdcopy")
	dir := t.TempDir()
	base, data := cloneBaseImage(t, dir)
	run := func(args ...string) string {
		t.Helper()
		return command{name: nbddBin, args: append([]string{"image"}, args...)}.run(t)
	}
	empty := filepath.Join(dir, "empty.raw")
	run("create", "--size", "1G", empty)
	if info := imageInfoJSON(t, empty); info.Kind != "raw" || info.Size != 1<<30 || info.AllocatedBytes != 0 {
		t.Errorf("image info of a new 1G image: %+v", info)
	}

	ovl := filepath.Join(dir, "vm.ovl")
	run("clone", base, ovl)
	s := startNBDD(t, "--export", "vm="+base+",cow="+ovl)
	writeClone(t, s.unixURI(t, "vm"))
	qemuIO(t, s.unixURI(t, "vm"), "discard 8M 1M", "flush")
	served := readExport(t, s.unixURI(t, "vm"))
	_, stderr, status := runNBDD(t, nil, "image", "flatten", ovl, filepath.Join(dir, "busy.raw"))
	if status != 1 || !strings.Contains(stderr, "in use") {
		t.Errorf("image flatten of an overlay nbdd is writing: status %d, %q; want 1 and \"in use\"", status, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "busy.raw")); err == nil {
		t.Error("a refused flatten left its output behind")
	}
	s.stop(t)

	info := imageInfoJSON(t, ovl)
	written := 0
	for _, w := range cloneWrites {
		written += w.n
	}
	if info.Kind != "overlay" || info.Size != cloneSize || info.Base != base ||
		info.AllocatedBytes < int64(written) || info.AllocatedBytes > int64(written)+int64(2*len(cloneWrites))*4096 {
		t.Errorf("image info of the clone: %+v; want an overlay over %s holding %d bytes and at most %d more for partial blocks", info, base, written, 2*len(cloneWrites)*4096)
	}

	flat := filepath.Join(dir, "flat.raw")
	run("flatten", ovl, flat)
	want := patched(data)
	clear(want[8<<20 : 9<<20])
	requireBytes(t, served, want, "the served clone")
	got, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	requireBytes(t, got, want, "the flattened clone")
	if alloc := imageInfoJSON(t, flat).AllocatedBytes; alloc > cloneSize-16<<20 {
		t.Errorf("the flattened image has %d bytes allocated; want its holes (17 MiB but a 4 KiB write) left sparse", alloc)
	}

	snap := filepath.Join(dir, "gold.raw")
	run("snapshot", ovl, snap)
	if fi, err := os.Stat(snap); err != nil || fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("snapshot %s: %v, mode %v; want read-only", snap, err, fi.Mode())
	}
	run("clone", snap, filepath.Join(dir, "vm2.ovl"))
	s2 := startNBDD(t, "--export", "vm2="+snap+",cow="+filepath.Join(dir, "vm2.ovl"))
	requireBytes(t, readExport(t, s2.unixURI(t, "vm2")), want, "a clone of the snapshot")
}

type imageInfoOut struct {
	Kind           string
	Size           int64
	AllocatedBytes int64 `json:"allocated_bytes"`
	Base           string
}

func imageInfoJSON(t *testing.T, ref string) imageInfoOut {
	t.Helper()
	out := command{name: nbddBin, args: []string{"image", "info", "--json", ref}}.run(t)
	var info imageInfoOut
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("image info --json %s: %v\n%s", ref, err, out)
	}
	return info
}

// TestCloneKSMReal: clones over a base loaded into mergeable memory
// (,load,ksm) hold one copy of the base per process, however many clones;
// the throttler in another nbdd registers its base once and the two
// processes' copies merge (real KSM, NBDD_KSM_REAL=1 as TestKSMReal);
// reads are the base's before and after, a write to one clone shows in no
// other, and the knobs are restored at exit.
func TestCloneKSMReal(t *testing.T) {
	requireRealKSM(t)
	requireTool(t, "nbdcopy")
	requireTool(t, "qemu-io")
	before := readKnobs(t)
	dir := t.TempDir()
	base, data := cloneBaseImage(t, dir)
	clone := func(name string) []string {
		return []string{"--export", name + "=" + base + ",cow=" + filepath.Join(dir, name+".ovl") + ",load,ksm"}
	}
	p1 := startNBDD(t, append(clone("a1"), clone("a2")...)...)
	sock := filepath.Join(dir, "ksm.sock")
	p2 := startNBDD(t, append(clone("b"), "--ksm", "--ksm-state-file", filepath.Join(dir, "ksm.state"), "--ksm-socket", sock)...)
	// The base's 48 MiB of data are loaded (its hole is not): one copy
	// and the Go heap stay under 80 MiB, two copies would not.
	if anon := statusKiB(t, p1.cmd.Process.Pid, "RssAnon") << 10; anon > 80<<20 {
		t.Errorf("the nbdd serving two clones of a loaded base with 48 MiB of data holds %d MiB of anonymous memory; want one copy", anon>>20)
	}
	requireBytes(t, readExport(t, p1.unixURI(t, "a1")), data, "a1 before merging")

	// The base is 48 MiB of data and a 16 MiB hole, which is never loaded.
	want := int64(cloneSize-16<<20) * 2 * 9 / 10
	start := time.Now()
	for {
		got := smapsKSM(t, p1.cmd.Process.Pid) + smapsKSM(t, p2.cmd.Process.Pid)
		if got >= want {
			t.Logf("KSM: %d MiB of the two processes' base copies merged %v after the throttler's start", got>>20, time.Since(start).Round(100*time.Millisecond))
			break
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("only %d of %d bytes merged within 60 s", got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := ksmSocketStatus(t, sock)
	found := false
	for _, e := range st.Exports {
		if e.Name == "base:"+base {
			found = e.MergedBytes > 0
		}
	}
	if !found {
		t.Errorf("the throttler's status has no merged export named %q: %+v", "base:"+base, st.Exports)
	}

	qemuIO(t, p1.unixURI(t, "a1"), "write -P 0x99 1M 64k", "flush")
	qemuIO(t, p1.unixURI(t, "a2"), "read -P 0 16M 16M")
	requireBytes(t, readExport(t, p1.unixURI(t, "a2")), data, "a2 after a write to a1")
	requireBytes(t, readExport(t, p2.unixURI(t, "b")), data, "b after merging and a write to a1")
	p1.stop(t)
	p2.stop(t)
	if after := readKnobs(t); !equalKnobs(before, after) {
		t.Errorf("KSM knobs not restored:\nbefore %v\nafter  %v", before, after)
	}
}

// statusKiB returns a "kB" field of /proc/PID/status.
func statusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// ksmSocketStatus asks a throttler's control socket for its status.
func ksmSocketStatus(t *testing.T, sock string) ksmStatus {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "status\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var st ksmStatus
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		t.Fatalf("status %q: %v", line, err)
	}
	return st
}

type ksmStatus struct {
	Exports []struct {
		Name        string `json:"name"`
		MergedBytes int64  `json:"merged_bytes"`
	} `json:"exports"`
}
