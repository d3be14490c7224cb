package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestQEMUImgConvert copies a 256 MiB random image into nbdd with
// qemu-img convert, back out into a new file, and compares the bytes, on
// the unix socket and on TCP. The export is a file, whose payloads all go
// through the strategy's buffers (TestNBDCopyRoundTrip covers memory).
func TestQEMUImgConvert(t *testing.T) {
	requireTool(t, "qemu-img")
	src := randomImage(t)
	forEachStrategy(t, func(t *testing.T, strategy string) {
		img := sparseFile(t, t.TempDir(), imageSize)
		s := startNBDD(t, "--strategy", strategy, "--listen", "tcp://127.0.0.1:0", "--export", "disk="+img)
		for _, uri := range []string{s.unixURI(t, "disk"), s.tcpURI(t, "disk")} {
			back := filepath.Join(t.TempDir(), "back.img")
			command{name: "qemu-img", args: []string{"convert", "-n", "-f", "raw", "-O", "raw", src, uri}}.run(t)
			command{name: "qemu-img", args: []string{"convert", "-f", "raw", "-O", "raw", uri, back}}.run(t)
			requireSameFiles(t, src, back)
			os.Remove(back)
		}
		// qemu-img's own comparison, reading nbdd again (the last write
		// came over TCP).
		uri := s.unixURI(t, "disk")
		out := command{name: "qemu-img", args: []string{"compare", "-f", "raw", "-F", "raw", src, uri}}.run(t)
		if !strings.Contains(out, "Images are identical") {
			t.Errorf("qemu-img compare %s %s: %q; want \"Images are identical\"", src, uri, out)
		}
	})
}

// TestQEMUIOPatterns writes and verifies patterns with qemu-io at offsets
// and lengths that are not sector-aligned, so that qemu's read-modify-write
// and nbdd's unaligned paths are both exercised. qemu-io exits 0 even when
// a pattern check fails, so the output is checked line by line.
func TestQEMUIOPatterns(t *testing.T) {
	requireTool(t, "qemu-io")
	forEachStrategyAndExport(t, 64<<20, func(t *testing.T, strategy string, export []string) {
		s := startNBDD(t, append([]string{"--strategy", strategy}, export...)...)
		uri := s.unixURI(t, "disk")
		ops := []struct{ pattern, off, n string }{
			{"0xab", "1000", "5000"},
			{"0x11", "4095", "1"},
			{"0x5c", "6000", "131073"},      // overlaps the first: its tail must read 0xab below
			{"0xe7", "33554431", "1048579"}, // straddles 32 MiB
			{"0x42", "67104000", "4864"},    // ends exactly at the export's end
		}
		var args []string
		for _, op := range ops {
			args = append(args, "-c", "write -P "+op.pattern+" "+op.off+" "+op.n)
		}
		for _, op := range ops[1:] {
			args = append(args, "-c", "read -P "+op.pattern+" "+op.off+" "+op.n)
		}
		args = append(args,
			"-c", "read -P 0xab 1000 3095", // 0xab before 0x11 at 4095
			"-c", "read -P 0xab 4096 1904", // 0xab after it, up to the 0x5c at 6000
			"-c", "read -P 0 0 1000", // never written
			"-c", "read -P 0 137073 4096",
			"-f", "raw", uri)
		out := command{name: "qemu-io", args: args}.run(t)
		checkQEMUIO(t, out, 4+len(ops)+len(ops)-1)
	})
}

var qemuIOOpRE = regexp.MustCompile(`(?m)^(wrote|read) (\d+)/(\d+) bytes at offset \d+$`)

// checkQEMUIO fails the test if qemu-io's output reports a failure or does
// not show ops complete operations.
func checkQEMUIO(t *testing.T, out string, ops int) {
	t.Helper()
	for _, bad := range []string{"failed", "error", "Error", "mismatch"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io reported %q:\n%s", bad, out)
		}
	}
	done := qemuIOOpRE.FindAllStringSubmatch(out, -1)
	for _, m := range done {
		if m[2] != m[3] {
			t.Errorf("qemu-io: short operation %q", m[0])
		}
	}
	if len(done) != ops {
		t.Fatalf("qemu-io completed %d operations; want %d:\n%s", len(done), ops, out)
	}
}
