package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitDirective returns the values of key= in the systemd unit file path,
// in order.
func unitDirective(t *testing.T, path, key string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vals []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), key+"="); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// TestSystemdUnits runs the sample units of contrib/systemd as systemd
// would, with systemd-socket-activate: it listens where nbdd.socket says,
// and on the first connection starts nbdd.service's ExecStart (binary and
// image moved to the test's) with the socket passed (LISTEN_FDS,
// LISTEN_FDNAMES) and the unit's Environment; nbdinfo, the first client,
// is served through it.
func TestSystemdUnits(t *testing.T) {
	requireTool(t, "systemd-socket-activate")
	requireTool(t, "nbdinfo")
	units := filepath.Join("..", "..", "contrib", "systemd")
	sockUnit, svcUnit := filepath.Join(units, "nbdd.socket"), filepath.Join(units, "nbdd.service")
	if got := unitDirective(t, svcUnit, "Type"); len(got) != 1 || got[0] != "notify" {
		t.Errorf("nbdd.service Type=%v; want notify (nbdd sends READY=1)", got)
	}
	listen := unitDirective(t, sockUnit, "ListenStream")
	fdname := unitDirective(t, sockUnit, "FileDescriptorName")
	exec0 := unitDirective(t, svcUnit, "ExecStart")
	if len(listen) != 1 || len(fdname) != 1 || len(exec0) != 1 {
		t.Fatalf("units: ListenStream %v, FileDescriptorName %v, ExecStart %v; want one each", listen, fdname, exec0)
	}
	dir, err := os.MkdirTemp(shortTempDir(), "nbdd-unit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img := sparseFile(t, dir, 4<<20)
	sock := filepath.Join(dir, "nbdd.sock")
	argv := strings.Fields(exec0[0])
	if argv[0] != "/usr/local/bin/nbdd" || argv[1] != "serve" {
		t.Fatalf("ExecStart %q: want /usr/local/bin/nbdd serve ...", exec0[0])
	}
	argv[0] = nbddBin
	for i, a := range argv {
		argv[i] = strings.Replace(a, "/var/lib/nbdd/disk.img", img, 1)
	}
	args := []string{"-l", sock, "--fdname=" + fdname[0]}
	for _, e := range unitDirective(t, svcUnit, "Environment") {
		args = append(args, "-E", e)
	}
	cmd := exec.Command("systemd-socket-activate", append(append(args, "--"), argv...)...)
	cmd.Env = cleanEnv()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr)
		}
	})
	if !stderr.waitFor("Listening on "+sock, startTimeout) {
		t.Fatalf("systemd-socket-activate did not listen on %s:\n%s", sock, stderr)
	}
	info := nbdinfo(t, "nbd+unix:///disk?socket="+sock)
	if len(info.Exports) != 1 || info.Exports[0].Size != 4<<20 {
		t.Errorf("nbdinfo through the activated socket: %+v; want export disk of 4 MiB", info.Exports)
	}
	// The unit's Environment (JSON logs) reached nbdd, which names the
	// socket it was passed.
	if !stderr.waitFor(`"msg":"serving a socket passed by the service manager","name":"`+fdname[0]+`"`, startTimeout) {
		t.Errorf("nbdd did not log the activated socket %q in JSON:\n%s", fdname[0], stderr)
	}
}

// TestSdNotify: with NOTIFY_SOCKET set (Type=notify), nbdd sends READY=1
// once its socket accepts connections, and STOPPING=1 when a SIGTERM
// begins the shutdown.
func TestSdNotify(t *testing.T) {
	dir, err := os.MkdirTemp(shortTempDir(), "nbdd-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	notifySock := filepath.Join(dir, "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifySock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sock := filepath.Join(dir, "s")
	s := launchNBDD(t, []string{"NOTIFY_SOCKET=" + notifySock}, []string{"serve", "--listen", "unix://" + sock, "--memory", "d=1M"}, 1)
	msg := readNotify(t, pc)
	if !strings.Contains(msg, "READY=1") || !strings.Contains(msg, "STATUS=serving 1 exports on 1 sockets") {
		t.Errorf("first notification %q; want READY=1 and a STATUS", msg)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Errorf("after READY=1: %v; want the socket accepting", err)
	} else {
		c.Close()
	}
	s.terminate(t)
	if msg := readNotify(t, pc); !strings.Contains(msg, "STOPPING=1") {
		t.Errorf("notification after SIGTERM %q; want STOPPING=1", msg)
	}
}

func readNotify(t *testing.T, pc *net.UnixConn) string {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(startTimeout))
	buf := make([]byte, 4096)
	n, _, err := pc.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	return string(buf[:n])
}

// TestPidfile: --pidfile holds nbdd's pid while it serves and is removed
// when it exits.
func TestPidfile(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "nbdd.pid")
	s := startNBDD(t, "--memory", "d=1M", "--pidfile", pidfile)
	b, err := os.ReadFile(pidfile)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(s.cmd.Process.Pid) {
		t.Errorf("pidfile: %q, %v; want %d", b, err, s.cmd.Process.Pid)
	}
	s.stop(t)
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Errorf("pidfile after exit: %v; want it removed", err)
	}
}

// TestCaptive: --run serves on a private socket, runs the command with
// nbdkit's variables, here nbdinfo on $uri, and exits with the command's
// status once it ends; the private socket's directory goes with it.
func TestCaptive(t *testing.T) {
	requireTool(t, "nbdinfo")
	dir := t.TempDir()
	out := filepath.Join(dir, "info.json")
	vars := filepath.Join(dir, "vars")
	script := `nbdinfo --json "$uri" > ` + out + ` && printf '%s\n' "$unixsocket" "$exportname" "$port" "$nbd" > ` + vars + ` && exit 7`
	stdout, stderr, status := runNBDD(t, nil, "serve", "--memory", "disk=3M", "--run", script)
	if status != 7 {
		t.Fatalf("nbdd --run: status %d; want the command's 7\nstdout:\n%s\nstderr:\n%s", status, stdout, stderr)
	}
	if strings.Contains(stderr, "nbdd: ") && !strings.Contains(stderr, "level=") {
		t.Errorf("stderr %q: the command's status needs no message", stderr)
	}
	var info nbdinfoJSON
	b, err := os.ReadFile(out)
	if err != nil || json.Unmarshal(b, &info) != nil || len(info.Exports) != 1 || info.Exports[0].Size != 3<<20 {
		t.Fatalf("nbdinfo --json \"$uri\" in the captive command: %s, %v; want export disk of 3 MiB", b, err)
	}
	b, err = os.ReadFile(vars)
	if err != nil {
		t.Fatal(err)
	}
	v := strings.Split(string(b), "\n")
	if len(v) < 4 || !strings.HasSuffix(v[0], "/sock") || v[1] != "disk" || v[2] != "" || v[3] != "nbd+unix:///disk?socket="+v[0] {
		t.Fatalf("captive variables unixsocket, exportname, port, nbd = %q", v)
	}
	if _, err := os.Stat(filepath.Dir(v[0])); !os.IsNotExist(err) {
		t.Errorf("private socket directory %s after exit: %v; want it removed", filepath.Dir(v[0]), err)
	}
	if strings.Contains(stdout, "nbdd: export") {
		t.Errorf("stdout %q: in captive mode stdout is the command's", stdout)
	}
}

// TestExitWithParent: nbdd started with --exit-with-parent by a shell
// shuts down gracefully (its socket removed) when the shell is killed.
func TestExitWithParent(t *testing.T) {
	dir, err := os.MkdirTemp(shortTempDir(), "nbdd-parent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock, pidfile := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	parent := exec.Command("/bin/sh", "-c", `"$0" serve --exit-with-parent --pidfile "$1" --listen "unix://$2" --memory d=1M >/dev/null 2>&1 & wait`, nbddBin, pidfile, sock)
	parent.Env = cleanEnv()
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	waitDial(t, "unix", sock, startTimeout)
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	parent.Process.Kill()
	parent.Wait()
	deadline := time.Now().Add(stopTimeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("nbdd (pid %d) still running %v after its parent was killed", pid, stopTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket after nbdd exited: %v; want it removed by a graceful shutdown", err)
	}
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	m := regexp.MustCompile(`\) (\S) `).FindSubmatch(b)
	return m != nil && string(m[1]) != "Z"
}

// TestListenRelativeUnix: --listen unix:PATH takes a path relative to the
// working directory, and the announced URI names the socket by its
// absolute path, which a client elsewhere can use.
func TestListenRelativeUnix(t *testing.T) {
	requireTool(t, "nbdinfo")
	dir, err := os.MkdirTemp(shortTempDir(), "nbdd-rel")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, filepath.Join(dir, "rel.sock"))
	if err != nil || len(rel) > 100 {
		t.Skipf("no short relative path from %s to %s", wd, dir)
	}
	s := launchNBDD(t, nil, []string{"serve", "--listen", "unix:" + rel, "--memory", "d=2M"}, 1)
	uri := s.uri(t, "d", "nbd+unix://")
	if want := "nbd+unix:///d?socket=" + filepath.Join(dir, "rel.sock"); uri != want {
		t.Errorf("announced %q; want %q", uri, want)
	}
	if info := nbdinfo(t, uri); len(info.Exports) != 1 || info.Exports[0].Size != 2<<20 {
		t.Errorf("nbdinfo %s: %+v", uri, info.Exports)
	}
}
