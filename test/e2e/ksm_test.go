package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/scrape"
	"github.com/nbdd/nbdd/protocol"
	"golang.org/x/sys/unix"
)

// ksmRoot is the host's KSM sysfs directory.
const ksmRoot = "/sys/kernel/mm/ksm"

// ksmKnobs are the knobs the throttler may write; all must be back to
// their values after nbdd exits.
var ksmKnobs = []string{
	"run", "pages_to_scan", "sleep_millisecs", "advisor_mode",
	"advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
	"advisor_target_scan_time", "smart_scan", "use_zero_pages",
	"merge_across_nodes", "max_page_sharing",
}

// TestKSMReal is the integration test against the host's real KSM:
// two exports loaded from the same 128 MiB image and marked ksm merge
// within seconds of the throttler's kick; reads return the image before
// and after merging; a write to one export never shows in the other; and
// every knob is restored when nbdd exits. KSM is host-wide, so the test
// runs only when NBDD_KSM_REAL=1 (.ci/run sets it), holds the same file
// lock as the ksm package's real test, and compares deltas.
func TestKSMReal(t *testing.T) {
	requireRealKSM(t)
	before := readKnobs(t)
	dir := t.TempDir()
	// Two images with the same content, as two VMs cloned from one base:
	// one file as two writable load exports is refused (each would write
	// its copy back over the other's).
	imgA, imgB := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	const size = 128 << 20
	data := make([]byte, size)
	rand.Read(data)
	for _, img := range []string{imgA, imgB} {
		if err := os.WriteFile(img, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := startNBDD(t, "--export", "a="+imgA+",load,ksm", "--export", "b="+imgB+",load,ksm",
		"--ksm", "--ksm-state-file", filepath.Join(dir, "ksm.state"), "--metrics", "127.0.0.1:0")
	a, b := dialRaw(t, s.sock, "a"), dialRaw(t, s.sock, "b")
	checkSample(t, a, data, "a before merging")
	checkSample(t, b, data, "b before merging")

	start := time.Now()
	merged := waitKSM(t, s.cmd.Process.Pid, size*9/10*2, 60*time.Second)
	t.Logf("KSM: %d MiB of the two exports' %d MiB merged %v after start (ksm_stat: %s)",
		merged>>20, 2*size>>20, time.Since(start).Round(100*time.Millisecond), ksmStat(t, s.cmd.Process.Pid))

	checkSample(t, a, data, "a after merging")
	checkSample(t, b, data, "b after merging")
	checkKSMMetrics(t, s.metricsURL(t))
	patch := bytes.Repeat([]byte{0x5a}, 4096)
	if errno, _ := a.mustDo(t, protocol.Request{Type: protocol.CmdWrite, Cookie: 99, Offset: 1 << 20, Length: 4096}, patch); errno != 0 {
		t.Fatalf("write to a: %v", errno)
	}
	if _, got := a.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: 100, Offset: 1 << 20, Length: 4096}, nil); !bytes.Equal(got, patch) {
		t.Error("a does not read back its own write")
	}
	if _, got := b.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: 101, Offset: 1 << 20, Length: 4096}, nil); !bytes.Equal(got, data[1<<20:1<<20+4096]) {
		t.Error("a write to export a shows in export b")
	}
	a.conn.Close()
	b.conn.Close()
	s.stop(t)
	if after := readKnobs(t); !equalKnobs(before, after) {
		t.Errorf("KSM knobs not restored:\nbefore %v\nafter  %v", before, after)
	}
}

// requireRealKSM skips unless NBDD_KSM_REAL=1, and then needs root and a
// writable KSM directory (a failure in CI, where .ci/run asks for it).
func requireRealKSM(t *testing.T) {
	t.Helper()
	if os.Getenv("NBDD_KSM_REAL") != "1" {
		t.Skip("set NBDD_KSM_REAL=1 to run against the host's KSM")
	}
	if os.Geteuid() != 0 || unix.Access(filepath.Join(ksmRoot, "run"), unix.W_OK) != nil {
		t.Fatalf("NBDD_KSM_REAL=1 needs root and a writable %s", ksmRoot)
	}
	f, err := os.OpenFile("/run/nbdd-ksm-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

func readKnobs(t *testing.T) map[string]string {
	t.Helper()
	k := map[string]string{}
	for _, name := range ksmKnobs {
		if b, err := os.ReadFile(filepath.Join(ksmRoot, name)); err == nil {
			k[name] = strings.TrimSpace(string(b))
		}
	}
	return k
}

func equalKnobs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkSample reads a spread of 64 KiB pieces and compares them with data.
func checkSample(t *testing.T, c *rawClient, data []byte, what string) {
	t.Helper()
	for i, off := range []int{0, 1 << 20, len(data) / 2, len(data) - 65536} {
		_, got := c.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: uint64(i + 1), Offset: uint64(off), Length: 65536}, nil)
		if !bytes.Equal(got, data[off:off+65536]) {
			t.Fatalf("%s: bytes at %d differ from the image", what, off)
		}
	}
}

// waitKSM polls the process's smaps until the KSM: lines add up to want
// bytes, and returns the total.
func waitKSM(t *testing.T, pid int, want int64, timeout time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got int64
	for time.Now().Before(deadline) {
		if got = smapsKSM(t, pid); got >= want {
			return got
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("only %d of %d bytes merged within %v", got, want, timeout)
	return got
}

func smapsKSM(t *testing.T, pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "KSM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			total += kb << 10
		}
	}
	return total
}

func ksmStat(t *testing.T, pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/ksm_stat")
	if err != nil {
		return err.Error()
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// checkKSMMetrics checks that --metrics reports the throttler at work
// once the exports have merged: a state other than idle, pages shared
// host-wide, and merged bytes in each export.
func checkKSMMetrics(t *testing.T, url string) {
	t.Helper()
	f, err := scrape.Get(nil, url)
	if err != nil {
		t.Fatal(err)
	}
	if idle, ok := f.Value("nbdd_ksm_state", "state", "idle"); !ok || idle != 0 {
		t.Errorf("nbdd_ksm_state{state=idle} = %v, %v; want 0 while merging", idle, ok)
	}
	if n := f.Sum("nbdd_ksm_state"); n != 1 {
		t.Errorf("nbdd_ksm_state sums to %v; want one state at 1", n)
	}
	if v, _ := f.Value("nbdd_ksm_pages_sharing"); v <= 0 {
		t.Errorf("nbdd_ksm_pages_sharing = %v; want > 0", v)
	}
	for _, e := range []string{"a", "b"} {
		if v, _ := f.Value("nbdd_ksm_export_merged_bytes", "export", e); v <= 0 {
			t.Errorf("nbdd_ksm_export_merged_bytes{export=%q} = %v; want > 0", e, v)
		}
	}
}
