// Package kernel is the kernel e2e harness: the Linux kernel's NBD client
// (nbd.ko + nbd-client, inside a qemu guest) against a server on the host's
// 127.0.0.1.
//
// The guest reaches the host only through qemu user networking with
// restrict=on and two guestfwd entries that run `socat - TCP:127.0.0.1:PORT`
// per connection: 10.0.2.100:10809 is the server under test, 10.0.2.101:10809
// a read-only server. build-initramfs.sh builds (and caches) the kernel and
// the base initramfs; guest-tests.sh is the command list; see both.
//
// Configurations (NBDD_KERNEL_CONFIGS=nbdkit,nbdd-pool,nbdd-stream; default
// all): nbdkit memory proves the harness; nbdd under the pool and stream
// strategies, each serving a memory and a file export (one runs the full
// list, the other the data-integrity subset), and under pool a
// copy-on-write clone of a file base too (the subset: dd, mkfs.ext4,
// e2fsck; the host then wants the base unchanged).
//
// Environment: CI (missing tools fail instead of skipping), NBDD_KERNEL_CACHE
// (default ~/.cache/nbdd-kernel), NBDD_KERNEL_TIMEOUT (seconds per boot),
// NBDD_KERNEL_KEEP (keep serial logs: print their paths), NBDD_KERNEL_ATTACH_CMD
// and NBDD_KERNEL_DETACH_CMD (run in the guest with a static nbdd in /extra,
// default: `nbdd attach --connections 2` then `nbdd detach` on /dev/nbd1 for the
// nbdd configurations; NBDD_KERNEL_ATTACH=0 leaves it out), NBDD_KERNEL_MEMORY_SIZE (the size syntax for
// --memory NAME=SIZE, default 1G), NBDD_KERNEL_NBDD_ARGS (extra arguments for
// the main nbdd, e.g. "--log-level debug" or "--fault write:512M-513M:eio" to
// see the harness report a failing server).
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/harness"
	"github.com/nbdd/nbdd/internal/s3test"
)

//go:embed guest-tests.sh
var guestTests []byte

const (
	exportSize = 1 << 30
	guestPort  = 10809
)

type export struct {
	name  string
	file  bool   // file-backed, else memory (or S3)
	mode  string // full | lite
	s3    bool   // an S3 image on a versitygw the test starts
	clone bool   // a copy-on-write clone of a file base (implies file)
}

type config struct {
	name     string
	nbdd     bool
	strategy string
	exports  []export
	stop     string // export for the graceful-stop step
}

var allConfigs = []config{
	{name: "nbdkit", exports: []export{{"mem", false, "full", false, false}}, stop: "mem"},
	{name: "nbdd-pool", nbdd: true, strategy: "pool",
		exports: []export{{"mem", false, "full", false, false}, {"file", true, "lite", false, false}, {"s3", false, "lite", true, false}, {"clone", true, "lite", false, true}}, stop: "mem"},
	{name: "nbdd-stream", nbdd: true, strategy: "stream",
		exports: []export{{"file", true, "full", false, false}, {"mem", false, "lite", false, false}}, stop: "file"},
}

// result is one row of the table: a guest step or a host-side check.
type result struct {
	config, step string
	ok           bool
	skipped      bool
	dur          time.Duration
	conns        int // guest connections opened during the step (-1: n/a)
	note         string
	detail       string
}

func ci() bool { return harness.CI() }

func requireTool(t *testing.T, name string) { t.Helper(); harness.RequireTool(t, name) }

func TestKernel(t *testing.T) {
	if testing.Short() && !ci() {
		t.Skip("kernel e2e boots qemu guests: skipped with -short (never in CI)")
	}
	requireTool(t, "qemu-system-x86_64")
	requireTool(t, "socat")

	configs := selectConfigs(t)
	start := time.Now()
	img := buildGuest(t)
	t.Logf("guest image ready in %v: %s, %s", time.Since(start).Round(time.Millisecond), img.vmlinux, img.initrd)

	var (
		all       []result
		nbddBin   string
		nbddErr   error
		buildOnce sync.Once
	)
	parent := t
	for _, c := range configs {
		c := c
		ok := t.Run(c.name, func(t *testing.T) {
			r := &runner{t: t, cfg: c, img: img}
			if c.nbdd {
				buildOnce.Do(func() { nbddBin, nbddErr = buildNBDD(parent) })
				if nbddErr != nil {
					if ci() {
						t.Fatalf("building nbdd: %v", nbddErr)
					}
					all = append(all, result{config: c.name, step: "build-nbdd", skipped: true, conns: -1, detail: nbddErr.Error()})
					t.Skipf("nbdd does not build yet: %v", nbddErr)
				}
				r.nbdd = nbddBin
			} else {
				requireTool(t, "nbdkit")
			}
			defer func() { all = append(all, r.results...) }()
			unlock := bootLock(t)
			defer unlock()
			r.run()
		})
		if !ok {
			counted := false
			for _, r := range all {
				if r.config == c.name && !r.ok && !r.skipped {
					counted = true
				}
			}
			if !counted { // a setup failure (server, build, qemu): still one row
				all = append(all, result{config: c.name, step: "setup", conns: -1, note: "see the test log"})
			}
		}
	}

	var pass, fail, skip int
	var tb strings.Builder
	tb.WriteString("\n| config | step | result | time | conns | note |\n| --- | --- | --- | ---: | ---: | --- |\n")
	for _, r := range all {
		st := "pass"
		switch {
		case r.skipped:
			st = "skip"
			skip++
		case r.ok:
			pass++
		default:
			st = "**FAIL**"
			fail++
		}
		conns := ""
		if r.conns >= 0 {
			conns = strconv.Itoa(r.conns)
		}
		note := r.note
		if r.skipped && note == "" {
			note = r.detail
		}
		fmt.Fprintf(&tb, "| %s | %s | %s | %.1f s | %s | %s |\n", r.config, r.step, st, r.dur.Seconds(), conns, note)
	}
	t.Log(tb.String())
	t.Logf("kernel e2e wall time %v", time.Since(start).Round(time.Second))
	t.Logf("%d passed, %d failed, %d skipped", pass, fail, skip)
}

// bootLock serializes guests across test processes (go test ./... runs
// packages in parallel, and two TCG guests on two shared cores would both
// crawl): an exclusive flock on a file in the cache, waited for with a bound.
func bootLock(t *testing.T) (unlock func()) {
	t.Helper()
	path := filepath.Join(cacheDir(t), ".boot.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("boot lock: %v", err)
	}
	deadline := time.Now().Add(10 * time.Minute)
	logged := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("boot lock %s: %v (another kernel e2e run holds it?)", path, err)
		}
		if !logged {
			t.Logf("waiting for %s: another guest is running", path)
			logged = true
		}
		time.Sleep(time.Second)
	}
	return func() { f.Close() }
}

func selectConfigs(t *testing.T) []config {
	sel := os.Getenv("NBDD_KERNEL_CONFIGS")
	if sel == "" {
		return allConfigs
	}
	var out []config
	for _, name := range strings.Split(sel, ",") {
		found := false
		for _, c := range allConfigs {
			if c.name == strings.TrimSpace(name) {
				out = append(out, c)
				found = true
			}
		}
		if !found {
			t.Fatalf("NBDD_KERNEL_CONFIGS: unknown configuration %q", name)
		}
	}
	return out
}

// ---- building ----

type guestImage struct{ vmlinux, initrd string }

func cacheDir(t *testing.T) string {
	if d := os.Getenv("NBDD_KERNEL_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatalf("no home directory for the cache (set NBDD_KERNEL_CACHE): %v", err)
	}
	return filepath.Join(home, ".cache", "nbdd-kernel")
}

func buildGuest(t *testing.T) guestImage {
	t.Helper()
	for _, tool := range []string{"apt-get", "dpkg-deb", "cpio", "zstd"} {
		requireTool(t, tool)
	}
	script, err := filepath.Abs("build-initramfs.sh")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", script, cacheDir(t))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-initramfs.sh: %v\n%s", err, stderr.String())
	}
	var img guestImage
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "VMLINUX="); ok {
			img.vmlinux = v
		}
		if v, ok := strings.CutPrefix(line, "INITRD="); ok {
			img.initrd = v
		}
	}
	if img.vmlinux == "" || img.initrd == "" {
		t.Fatalf("build-initramfs.sh printed no VMLINUX/INITRD:\n%s\n%s", out, stderr.String())
	}
	return img
}

func buildNBDD(t *testing.T) (string, error) {
	dir, err := os.MkdirTemp("", "nbdd-kbin")
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "nbdd")
	return bin, harness.BuildNBDD(bin, true) // static: the same binary can go into the guest
}

// ---- servers ----

// server is a server process on 127.0.0.1:port.
type server struct {
	*harness.Process
	name string
	log  *harness.SyncBuffer
	port int
}

// startServer starts argv and waits until it answers an NBD handshake on
// 127.0.0.1:port (harness.ProbeNBD). Cleanup stops it, showing its log if
// the test failed.
func startServer(t *testing.T, name string, port int, argv ...string) *server {
	t.Helper()
	return startServerEnv(t, name, port, nil, argv...)
}

// startServerEnv is startServer with env added to the environment.
func startServerEnv(t *testing.T, name string, port int, env []string, argv ...string) *server {
	t.Helper()
	s := &server{name: name, log: &harness.SyncBuffer{}, port: port}
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	t.Logf("start %s: %s", name, strings.Join(argv, " "))
	p, err := harness.Start(cmd)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	s.Process = p
	t.Cleanup(func() {
		if s.Running() {
			s.Stop(10 * time.Second)
		}
		if t.Failed() || os.Getenv("NBDD_KERNEL_KEEP") != "" {
			t.Logf("%s log:\n%s", name, tail(s.log.String(), 60))
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := s.WaitServing(15*time.Second, func() error { return harness.ProbeNBD("tcp", addr) }); err != nil {
		t.Fatalf("%s not serving NBD on %s: %v\n%s", name, addr, err, s.log.String())
	}
	return s
}

// ---- one configuration: servers + one guest boot ----

type runner struct {
	bases   map[string][2]string // clone export → its base file and the base's SHA-256
	t       *testing.T
	cfg     config
	img     guestImage
	nbdd    string
	dir     string
	main    *server
	ro      *server
	fault   *server
	files   map[string]string // export → backing file
	results []result
	holes   map[string][][2]int64
}

func (r *runner) add(res result) {
	res.config = r.cfg.name
	r.results = append(r.results, res)
	if !res.ok && !res.skipped {
		r.t.Errorf("%s: %s FAILED\n%s", r.cfg.name, res.step, res.detail)
	}
}

func memSize() string {
	if s := os.Getenv("NBDD_KERNEL_MEMORY_SIZE"); s != "" {
		return s
	}
	return "1G"
}

func (r *runner) startServers() {
	t := r.t
	mainPort, roPort, faultPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	r.files = map[string]string{}
	if !r.cfg.nbdd {
		r.main = startServer(t, "nbdkit", mainPort, "nbdkit", "-f", "-p", strconv.Itoa(mainPort), "-i", "127.0.0.1",
			"--exit-with-parent", "memory", "1G")
		r.ro = startServer(t, "nbdkit-ro", roPort, "nbdkit", "-f", "-r", "-p", strconv.Itoa(roPort), "-i", "127.0.0.1",
			"--exit-with-parent", "memory", "64M")
		r.fault = startServer(t, "nbdkit-fault", faultPort, "nbdkit", "-f", "-p", strconv.Itoa(faultPort), "-i", "127.0.0.1",
			"--exit-with-parent", "--filter=error", "memory", "64M", "error-pwrite=EIO", "error-pwrite-rate=100%")
		return
	}
	// debug: nbdd logs "flushed on disconnect" at that level
	args := []string{r.nbdd, "serve", "--listen", fmt.Sprintf("tcp://127.0.0.1:%d", mainPort), "--strategy", r.cfg.strategy,
		"--log-level", "debug"}
	var env []string
	for _, e := range r.cfg.exports {
		if e.s3 {
			var spec string
			spec, env = r.s3Export(e.name)
			args = append(args, "--s3", spec)
			continue
		}
		if e.clone {
			args = append(args, "--export", e.name+"="+r.cloneBase(e.name)+",cow="+filepath.Join(r.dir, e.name+".ovl"))
			continue
		}
		if e.file {
			p := filepath.Join(r.dir, e.name+".img")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(exportSize); err != nil {
				t.Fatal(err)
			}
			f.Close()
			r.files[e.name] = p
			args = append(args, "--export", e.name+"="+p)
		} else {
			args = append(args, "--memory", e.name+"="+memSize())
		}
	}
	args = append(args, strings.Fields(os.Getenv("NBDD_KERNEL_NBDD_ARGS"))...)
	r.main = startServerEnv(t, "nbdd", mainPort, env, args...)
	r.ro = startServer(t, "nbdd-ro", roPort, r.nbdd, "serve", "--listen", fmt.Sprintf("tcp://127.0.0.1:%d", roPort),
		"--strategy", r.cfg.strategy, "--read-only", "--memory", "ro=64M")
	// --fault (hidden, for tests) wraps every export of the process.
	r.fault = startServer(t, "nbdd-fault", faultPort, r.nbdd, "serve", "--listen", fmt.Sprintf("tcp://127.0.0.1:%d", faultPort),
		"--strategy", r.cfg.strategy, "--memory", "fault=64M", "--fault", "write:0-1M:eio")
}

func (r *runner) run() {
	t := r.t
	dir, err := os.MkdirTemp("", "nbdd-k")
	if err != nil {
		t.Fatal(err)
	}
	r.dir = dir
	keep := os.Getenv("NBDD_KERNEL_KEEP") != ""
	t.Cleanup(func() {
		if !keep && !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("kept %s (serial.log, socat*.log)", dir)
		}
	})
	r.startServers()

	// The per-run cpio: /test.sh, /test.env and optional static tools in /extra.
	var exports []string
	for _, e := range r.cfg.exports {
		exports = append(exports, e.name+":"+e.mode)
	}
	faultOK := ""
	if r.cfg.nbdd {
		faultOK = "2097152" // outside write:0-1M
	}
	env := fmt.Sprintf("SERVER=10.0.2.100\nPORT=%d\nRO_SERVER=10.0.2.101\nRO_EXPORT=ro\n"+
		"FAULT_SERVER=10.0.2.102\nFAULT_EXPORT=fault\nFAULT_OK_OFFSET=%s\n"+
		"EXPORTS=%q\nSTOP_EXPORT=%s\nEXPECT_SIZE=%d\nGUEST_TIMEOUT=%d\n",
		guestPort, faultOK, strings.Join(exports, " "), r.cfg.stop, exportSize, int(bootTimeout().Seconds())-20)
	files := []cpioFile{{name: "test.sh", mode: 0o755, data: guestTests}}
	attach, detach := os.Getenv("NBDD_KERNEL_ATTACH_CMD"), os.Getenv("NBDD_KERNEL_DETACH_CMD")
	if attach == "" && os.Getenv("NBDD_KERNEL_ATTACH") != "0" {
		// nbdd attach/detach (pure Go, netlink) from the static binary in /extra
		attach = "nbdd attach --export mem --block-size 4096 --connections 2 10.0.2.100:10809 /dev/nbd1"
		detach = "nbdd detach /dev/nbd1"
	}
	if attach != "" && r.nbdd != "" {
		env += fmt.Sprintf("ATTACH_CMD=%q\nDETACH_CMD=%q\n", attach, detach)
		bin, err := os.ReadFile(r.nbdd)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, cpioFile{name: "extra", mode: 0o755 | modeDir}, cpioFile{name: "extra/nbdd", mode: 0o755, data: bin})
	}
	files = append(files, cpioFile{name: "test.env", mode: 0o644, data: []byte(env)})
	initrd := filepath.Join(dir, "initrd.img")
	if err := writeInitrd(initrd, files, r.img.initrd); err != nil {
		t.Fatal(err)
	}
	r.boot(initrd)
}

func bootTimeout() time.Duration {
	if s := os.Getenv("NBDD_KERNEL_TIMEOUT"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 30 {
			return time.Duration(n) * time.Second
		}
	}
	return 300 * time.Second
}

func kvmUsable() bool {
	// kvm_pvm (this machine kind) cannot run a stock kernel: only plain
	// kvm_intel/kvm_amd count.
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
				f.Close()
				return true
			}
		}
	}
	return false
}

var (
	reBegin    = regexp.MustCompile(`@@BEGIN (\S+)@@`)
	reResult   = regexp.MustCompile(`@@RESULT (\S+) rc=(\d+) ms=(\d+)@@`)
	reHole     = regexp.MustCompile(`@@HOLE (\S+) (\d+) (\d+)@@`)
	reStopData = regexp.MustCompile(`@@STOPDATA (\S+) (\d+) (\d+) ([0-9a-f]{64})@@`)
	reStop     = regexp.MustCompile(`@@STOP-SERVER@@`)
	reReady    = regexp.MustCompile(`@@READY uptime=([\d.]+)@@`)
	reDone     = regexp.MustCompile(`@@DONE rc=(\d+)`)
)

func (r *runner) boot(initrd string) {
	t := r.t
	serialPath := filepath.Join(r.dir, "serial.log")
	serialFile, err := os.Create(serialPath)
	if err != nil {
		t.Fatal(err)
	}
	defer serialFile.Close()
	socatLog := func(name string) string { return filepath.Join(r.dir, "socat-"+name+".log") }
	fwd := func(ip string, s *server, name string) string {
		// -lf: socat's stderr would otherwise go into the NBD stream.
		return fmt.Sprintf("guestfwd=tcp:%s:%d-cmd:socat -d -d -lf %s - TCP:127.0.0.1:%d", ip, guestPort, socatLog(name), s.port)
	}
	accel := []string{"-accel", "tcg", "-cpu", "max"}
	if kvmUsable() {
		accel = []string{"-accel", "kvm", "-cpu", "host,-arch-capabilities"}
	}
	args := append(accel, "-smp", "1", "-m", "1024",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
		"-kernel", r.img.vmlinux, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=4",
		"-netdev", "user,id=n0,restrict=on,"+fwd("10.0.2.100", r.main, "main")+","+fwd("10.0.2.101", r.ro, "ro")+","+fwd("10.0.2.102", r.fault, "fault"),
		"-device", "virtio-net-pci,netdev=n0")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	var qerr bytes.Buffer
	cmd.Stderr = &qerr
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}

	type open struct {
		line  int
		conns int
	}
	var (
		lines    []string
		begun    = map[string]open{}
		order    []string
		ended    = map[string]bool{}
		done     = -1
		ready    string
		stopData []string
	)
	r.holes = map[string][][2]int64{}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		lines = append(lines, line)
		fmt.Fprintln(serialFile, line)
		if m := reBegin.FindStringSubmatch(line); m != nil {
			begun[m[1]] = open{line: len(lines), conns: countConns(socatLog("main"))}
			order = append(order, m[1])
		} else if m := reResult.FindStringSubmatch(line); m != nil {
			b := begun[m[1]]
			rc, _ := strconv.Atoi(m[2])
			msec, _ := strconv.Atoi(m[3])
			res := result{step: m[1], ok: rc == 0, dur: time.Duration(msec) * time.Millisecond,
				conns: countConns(socatLog("main")) - b.conns}
			if rc == 77 && !ci() { // the guest's "skipped" (a tool left out of the initramfs)
				res.skipped = true
				res.note = "skipped in the guest"
			}
			switch m[1] {
			case "readonly-write":
				res.conns = countConns(socatLog("ro"))
			case "fault-write-eio":
				res.conns = countConns(socatLog("fault"))
			}
			out := lines[min(b.line, len(lines)-1) : len(lines)-1]
			if rc != 0 {
				res.detail = fmt.Sprintf("guest step %s: rc=%d (137 = killed by its timeout); serial output:\n%s",
					m[1], rc, tail(strings.Join(out, "\n"), 80))
			}
			if strings.HasPrefix(m[1], "multiconn-") && rc == 0 && res.conns != 4 {
				res.ok = false
				res.detail = fmt.Sprintf("nbd-client -C 4 opened %d connections, want 4", res.conns)
			}
			ended[m[1]] = true
			r.add(res)
		} else if m := reHole.FindStringSubmatch(line); m != nil {
			off, _ := strconv.ParseInt(m[2], 10, 64)
			n, _ := strconv.ParseInt(m[3], 10, 64)
			r.holes[m[1]] = append(r.holes[m[1]], [2]int64{off, n})
		} else if m := reStopData.FindStringSubmatch(line); m != nil {
			stopData = m[1:]
		} else if reStop.MatchString(line) {
			r.hostChecksAndStop(stopData)
		} else if m := reReady.FindStringSubmatch(line); m != nil {
			ready = m[1]
		} else if m := reDone.FindStringSubmatch(line); m != nil {
			done, _ = strconv.Atoi(m[1])
		}
	}
	werr := cmd.Wait()
	wall := time.Since(t0)
	t.Logf("%s: guest wall time %v, boot to /init ready %ss, serial log %s", r.cfg.name, wall.Round(100*time.Millisecond), ready, serialPath)
	for _, s := range order {
		if !ended[s] {
			r.add(result{step: s, conns: -1, detail: fmt.Sprintf("step started but never reported (guest hung or was killed)\n%s",
				tail(strings.Join(lines, "\n"), 60))})
		}
	}
	if done < 0 {
		r.add(result{step: "guest-finished", conns: -1, dur: wall,
			detail: fmt.Sprintf("no @@DONE@@ marker: qemu %v (timeout %v)\nqemu stderr: %s\nlast serial lines:\n%s",
				werr, bootTimeout(), qerr.String(), tail(strings.Join(lines, "\n"), 60))})
	}
	if len(order) == 0 {
		t.Errorf("%s: the guest ran no steps", r.cfg.name)
	}
	if r.cfg.nbdd && !r.main.Running() {
		r.checkServerLog()
	}
	r.checkCloneBases()
}

// cloneBase writes the base of clone export name: an image of exportSize
// bytes whose first 64 MiB hold a pattern (the rest a hole), so the guest
// reads the base where the clone has not written, and notes its SHA-256.
func (r *runner) cloneBase(name string) string {
	t := r.t
	p := filepath.Join(r.dir, name+".base")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 64<<20)
	for i := range rnd {
		rnd[i] = byte(i*7919 ^ i>>13)
	}
	if _, err := f.Write(rnd); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(exportSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if r.bases == nil {
		r.bases = map[string][2]string{}
	}
	sum, err := fileSHA(p, 0, exportSize)
	if err != nil {
		t.Fatal(err)
	}
	r.bases[name] = [2]string{p, sum}
	return p
}

// checkCloneBases wants every clone's base unchanged by the guest's
// writes, mkfs and fsck, which all went to the overlay.
func (r *runner) checkCloneBases() {
	for name, b := range r.bases {
		res := result{step: "host-clone-base-" + name, conns: -1}
		sum, err := fileSHA(b[0], 0, exportSize)
		switch {
		case err != nil:
			res.detail = err.Error()
		case sum != b[1]:
			res.detail = fmt.Sprintf("base %s changed: sha256 %s, was %s", b[0], sum, b[1])
		default:
			res.ok, res.note = true, "base sha256 unchanged"
		}
		r.add(res)
	}
}

// checkServerLog accounts for every connection in nbdd's log: each one the
// guest closed with nbd-client -d must end in NBD_CMD_DISC ("client
// disconnected") after "flushed on disconnect", the one left idle for the
// graceful stop in "connection closed by shutdown", and the server must say
// it shut down cleanly.
func (r *runner) checkServerLog() {
	log := r.main.log.String()
	n := func(msg string) int { return strings.Count(log, `msg="`+msg+`"`) }
	c, d, s, e, f := n("client connected"), n("client disconnected"), n("connection closed by shutdown"),
		n("connection closed"), n("connection failed")
	// conn ids of disconnects without a flush
	flushed := map[string]bool{}
	var unflushed []string
	reConn := regexp.MustCompile(` conn=(\d+)`)
	for _, l := range strings.Split(log, "\n") {
		m := reConn.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		switch {
		case strings.Contains(l, `msg="flushed on disconnect"`):
			flushed[m[1]] = true
		case strings.Contains(l, `msg="client disconnected"`) && !flushed[m[1]]:
			unflushed = append(unflushed, m[1])
		}
	}
	res := result{step: "host-server-log", conns: -1,
		note: fmt.Sprintf("%d connected: %d NBD_CMD_DISC (%d flushed), %d closed by shutdown, %d closed otherwise, %d failed",
			c, d, d-len(unflushed), s, e, f)}
	res.ok = c > 0 && c == d+s && s >= 1 && e == 0 && f == 0 && len(unflushed) == 0 &&
		strings.Contains(log, `msg="shut down cleanly"`)
	if !res.ok {
		res.detail = res.note + `; want every connection ended by a flush and NBD_CMD_DISC except the graceful-stop one, and "shut down cleanly"`
		if len(unflushed) > 0 {
			res.detail += fmt.Sprintf("; no \"flushed on disconnect\" for conn %s", strings.Join(unflushed, ","))
		}
		res.detail += "\n" + tail(log, 60)
	}
	r.add(res)
}

// countConns counts the guest's connections: one socat per connection, each
// logging "starting data transfer loop" at -d -d.
func countConns(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("starting data transfer loop"))
}

// hostChecksAndStop runs while the guest sits idle on a connected device:
// block status of the discarded ranges, then SIGTERM to the server, then the
// data the guest wrote just before (file exports).
func (r *runner) hostChecksAndStop(stopData []string) {
	for _, e := range r.cfg.exports {
		holes := r.holes[e.name]
		if len(holes) == 0 {
			continue
		}
		t0 := time.Now()
		res := result{step: "host-blockstatus-" + e.name, conns: -1}
		if _, err := exec.LookPath("nbdinfo"); err != nil {
			res.skipped = !ci() // in CI a missing tool is a failure
			res.detail = "nbdinfo not installed (libnbd-bin)"
			res.note = res.detail
		} else {
			res.detail, res.ok = checkHoles(r.main.port, e.name, holes)
			if res.ok {
				res.note = strings.ReplaceAll(res.detail, "\n", "; ")
			}
		}
		res.dur = time.Since(t0)
		r.add(res)
	}

	// nbdd must close idle connections and exit on SIGTERM. nbdkit instead
	// waits for its clients to disconnect (its documented behaviour): for the
	// harness run it gets a short grace period and is then killed, which the
	// guest sees the same way (the socket closes).
	grace := 15 * time.Second
	if !r.cfg.nbdd {
		grace = 3 * time.Second
	}
	graceful, how, took := r.main.Stop(grace)
	res := result{step: "host-sigterm", ok: graceful, dur: took, conns: -1, note: how}
	if !r.cfg.nbdd && strings.HasPrefix(how, "still running") {
		res.ok = true
		res.note = "nbdkit waits for idle clients: killed after 3 s"
	}
	if !res.ok {
		res.detail = fmt.Sprintf("%s after SIGTERM: %s\nserver log:\n%s", r.main.name, how, tail(r.main.log.String(), 40))
	}
	r.add(res)

	if len(stopData) == 4 {
		p, ok := r.files[stopData[0]]
		if !ok {
			return
		}
		off, _ := strconv.ParseInt(stopData[1], 10, 64)
		n, _ := strconv.ParseInt(stopData[2], 10, 64)
		res := result{step: "host-stopdata-" + stopData[0], conns: -1}
		sum, err := fileSHA(p, off, n)
		switch {
		case err != nil:
			res.detail = err.Error()
		case sum != stopData[3]:
			res.detail = fmt.Sprintf("%s at %d+%d: sha256 %s, the guest wrote %s (acknowledged write lost on graceful stop)", p, off, n, sum, stopData[3])
		default:
			res.ok = true
		}
		r.add(res)
	}
}

func fileSHA(path string, off, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkHoles asks the server for base:allocation (nbdinfo --map) and wants
// every MiB-aligned part of each discarded range reported as a hole or zero.
func checkHoles(port int, exportName string, holes [][2]int64) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/%s", port, exportName)
	out, err := exec.CommandContext(ctx, "nbdinfo", "--map", uri).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("nbdinfo --map %s: %v: %s", uri, err, out), false
	}
	type ext struct{ off, n, typ int64 }
	var exts []ext
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		o, e1 := strconv.ParseInt(f[0], 10, 64)
		n, e2 := strconv.ParseInt(f[1], 10, 64)
		ty, e3 := strconv.ParseInt(f[2], 10, 64)
		if e1 == nil && e2 == nil && e3 == nil {
			exts = append(exts, ext{o, n, ty})
		}
	}
	var msgs []string
	ok := true
	for _, h := range holes {
		a := (h[0] + 1<<20 - 1) &^ (1<<20 - 1)
		b := (h[0] + h[1]) &^ (1<<20 - 1)
		if b <= a {
			continue
		}
		covered := int64(0)
		var bad []string
		for _, e := range exts {
			lo, hi := max(a, e.off), min(b, e.off+e.n)
			if lo >= hi {
				continue
			}
			covered += hi - lo
			if e.typ&3 == 0 {
				bad = append(bad, fmt.Sprintf("%d+%d data", lo, hi-lo))
			}
		}
		switch {
		case covered != b-a:
			ok = false
			msgs = append(msgs, fmt.Sprintf("range %d+%d: map covers only %d bytes", a, b-a, covered))
		case len(bad) > 0:
			ok = false
			msgs = append(msgs, fmt.Sprintf("range %d+%d discarded by the guest, still reported as data: %s", a, b-a, strings.Join(bad, ", ")))
		default:
			msgs = append(msgs, fmt.Sprintf("%d MiB at %d MiB: hole/zero", (b-a)>>20, a>>20))
		}
	}
	if !ok {
		msgs = append(msgs, "nbdinfo --map:\n"+tail(string(out), 40))
	}
	return strings.Join(msgs, "\n"), ok
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// ---- initrd: an uncompressed newc cpio, then the cached base archive ----

const modeDir = 0o040000

type cpioFile struct {
	name string
	mode uint32 // permission bits, | modeDir for a directory
	data []byte
}

func writeCpio(w io.Writer, files []cpioFile) error {
	var buf bytes.Buffer
	pad := func() {
		for buf.Len()%4 != 0 {
			buf.WriteByte(0)
		}
	}
	ino := 1
	hdr := func(name string, mode uint32, size int) {
		fmt.Fprintf(&buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
		buf.WriteString(name)
		buf.WriteByte(0)
		pad()
		ino++
	}
	for _, f := range files {
		mode := f.mode
		if mode&modeDir == 0 {
			mode |= 0o100000
		}
		hdr(f.name, mode, len(f.data))
		buf.Write(f.data)
		pad()
	}
	hdr("TRAILER!!!", 0, 0)
	for buf.Len()%512 != 0 {
		buf.WriteByte(0)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// writeInitrd: the kernel unpacks concatenated archives in order; the
// uncompressed one goes first (as with early microcode), the compressed base
// last.
func writeInitrd(path string, files []cpioFile, base string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := writeCpio(out, files); err != nil {
		return err
	}
	in, err := os.Open(base)
	if err != nil {
		return err
	}
	defer in.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	return out.Close()
}

// s3Export starts versitygw, creates a 1 GiB image in a fresh bucket with
// nbdd image create, and returns the --s3 value and the environment that
// reaches it (with the journal under the run directory).
func (r *runner) s3Export(name string) (spec string, env []string) {
	t := r.t
	srv := s3test.Start(t)
	ref := "s3://" + srv.NewBucket(t) + "/" + name
	env = append(srv.Env(), "NBDD_S3_CACHE_DIR="+filepath.Join(r.dir, "s3cache"))
	cmd := exec.Command(r.nbdd, "image", "create", "--size", strconv.Itoa(exportSize), ref)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nbdd image create %s: %v\n%s", ref, err, out)
	}
	return name + "=" + ref, env
}
