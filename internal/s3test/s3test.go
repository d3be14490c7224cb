// Package s3test runs a real S3 server for tests: versitygw v1.8.0 with its
// posix backend on a temporary directory, on a free loopback port, with
// random credentials.
//
// Start returns a running Server and stops it when the test ends. The
// Server's Env gives the standard AWS environment (AWS_ENDPOINT_URL,
// AWS_ACCESS_KEY_ID, ...) for a child process such as nbdd; Client gives an
// aws-sdk-go-v2 S3 client for the test itself. Stop, Kill, Pause, Resume and
// Restart drive the server process for fault tests, and Stats counts the
// requests it served from its access log.
//
// The versitygw binary is found through NBDD_VERSITYGW, then PATH, then the
// directory `go install` writes to ($GOBIN, else $GOPATH/bin), where .ci/run
// builds it. When it is missing, Start skips the test outside CI and fails
// it in CI.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"debug/buildinfo"
	"encoding/hex"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nbdd/nbdd/internal/testenv"
)

// Version is the versitygw release the tests are written against. .ci/run
// and bench/s3.sh read it from this line and build that release.
const Version = "v1.8.0"

// Region is the region the server is started with and the clients sign for.
const Region = "us-east-1"

// healthPath is versitygw's --health endpoint, polled until it answers.
const healthPath = "/nbdd-health"

// startTimeout bounds how long Start and Restart wait for the server to
// answer; versitygw answers within about 100 ms here.
const startTimeout = 30 * time.Second

// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL:
// versitygw finishes the requests in flight first (about 0.1 s when
// idle, over 10 s seen with uploads cut short by a 412).
const stopTimeout = 3 * time.Second

// Server is one versitygw process. Its exported fields do not change while
// it runs; Restart keeps them (same port, same data directory, same keys).
type Server struct {
	// Endpoint is the server's URL, http://localhost:PORT. It names a
	// host, as the endpoint of an S3-compatible service does, so a client
	// that puts the bucket in the host name (virtual-hosted style, the
	// SDK's default) fails to resolve it instead of quietly working, as it
	// would with an IP address; clients of such services must use
	// path-style addressing.
	Endpoint string
	// Addr is the listening address, 127.0.0.1:PORT.
	Addr string
	// AccessKey and SecretKey are the root credentials, random per server.
	AccessKey, SecretKey string
	// Dir is the posix backend's root: each bucket is a directory in it and
	// each object a file.
	Dir string
	// AccessLog is the file the server logs every request to (see Stats).
	AccessLog string

	bin     string
	logPath string // the server's stdout and stderr
	t       testing.TB

	mu   sync.Mutex // guards proc and the process's state
	proc *process
}

// process is one run of the server binary.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when Wait has returned
	err    error         // Wait's result, set before exited is closed
}

// Binary returns the path of the versitygw binary, looked up in
// NBDD_VERSITYGW, PATH, and the `go install` directory, in that order.
func Binary() (string, error) {
	if p := os.Getenv("NBDD_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("NBDD_VERSITYGW: %w", err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	p := filepath.Join(goBin(), "versitygw")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("versitygw not in NBDD_VERSITYGW, PATH or %s "+
			"(go install github.com/versity/versitygw/cmd/versitygw@%s)", goBin(), Version)
	}
	return p, nil
}

// binaryVersion returns the module version a Go binary was built from,
// as `go version -m` prints it: the release for `go install pkg@version`,
// "(devel)" for a build from a checkout.
func binaryVersion(bin string) string {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return info.Main.Version
}

// goBin is where `go install` puts binaries: $GOBIN, else the first
// $GOPATH entry's bin (go help gopath).
func goBin() string {
	if d := os.Getenv("GOBIN"); d != "" {
		return d
	}
	return filepath.Join(filepath.SplitList(build.Default.GOPATH)[0], "bin")
}

// Start starts a server for t and stops it when t ends. It skips t when
// the binary is missing, unless CI is set, and fails t if the server does
// not come up.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		testenv.SkipOutsideCI(t, "%v", err)
	}
	if v := binaryVersion(bin); v != Version {
		t.Logf("s3test: %s is versitygw %s; these tests pin the behaviour of %s", bin, v, Version)
	}
	dir := t.TempDir()
	s := &Server{
		AccessKey: randomHex(10),
		SecretKey: randomHex(20),
		Dir:       filepath.Join(dir, "data"),
		AccessLog: filepath.Join(dir, "access.log"),
		bin:       bin,
		logPath:   filepath.Join(dir, "server.log"),
		t:         t,
	}
	if err := os.Mkdir(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.cleanup)
	// A free port can be taken by another process between our probe and
	// the server's bind; try a few ports before giving up.
	for attempt := 0; ; attempt++ {
		s.Addr = freeLoopbackAddr(t)
		s.Endpoint = "http://localhost:" + s.Addr[strings.LastIndexByte(s.Addr, ':')+1:]
		err = s.start()
		if err == nil || attempt == 4 || !s.addrInUse() {
			break
		}
	}
	if err != nil {
		t.Fatalf("s3test: %v\n%s", err, s.serverLog())
	}
	return s
}

// cleanup kills the server at the end of the test, since nothing it holds
// matters any more, and logs its output if the test failed.
func (s *Server) cleanup() {
	s.Kill()
	if s.t.Failed() {
		s.t.Logf("versitygw output:\n%s", s.serverLog())
	}
}

// freeLoopbackAddr returns a loopback address whose port was free a moment
// ago.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand.Read)
	return hex.EncodeToString(b)
}

// args are the server's command line: path-style addressing (no
// --virtual-domain), keep-alive connections as every S3 service keeps
// them, an access log for Stats, and a health path to poll.
func (s *Server) args() []string {
	return []string{
		"--access", s.AccessKey, "--secret", s.SecretKey,
		"--port", s.Addr, "--region", Region,
		"--keep-alive", "--quiet",
		"--health", healthPath,
		"--access-log", s.AccessLog,
		"posix", s.Dir,
	}
}

// serverEnv is the server process's environment: versitygw reads many of
// its flags from variables (VGW_*, ROOT_*), so none of the caller's reach
// it.
func serverEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// start runs the binary and waits until it answers on its health path.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("server already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary, even on a panic or a kill.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := waitHealthy(s.Endpoint+healthPath, p.exited); err != nil {
		_ = cmd.Process.Kill()
		<-p.exited
		return err
	}
	s.proc = p
	return nil
}

// waitHealthy polls url until it answers 200, the process exits, or
// startTimeout passes.
func waitHealthy(url string, exited <-chan struct{}) error {
	// No keep-alive: versitygw waits for idle connections before it exits.
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw did not answer %s within %v: %w", url, startTimeout, err)
		}
		select {
		case <-exited:
			return errors.New("versitygw exited before answering")
		case <-tick.C:
		}
	}
}

// addrInUse reports whether the last start failed because the port was
// taken.
func (s *Server) addrInUse() bool {
	return bytes.Contains([]byte(s.serverLog()), []byte("address already in use"))
}

func (s *Server) serverLog() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Stop stops the server with SIGTERM, and SIGKILL if it has not exited
// within 3 s (see stopTimeout). It does nothing if the server is not
// running.
func (s *Server) Stop() {
	p := s.take()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // in case it was paused
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		s.t.Logf("s3test: versitygw pid %d still running %v after SIGTERM; killing it", p.cmd.Process.Pid, stopTimeout)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Kill stops the server with SIGKILL, as a crash would: it gets no chance
// to finish requests in flight. It does nothing if the server is not
// running.
func (s *Server) Kill() {
	if p := s.take(); p != nil {
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// take returns the running process, or nil, and marks the server
// stopped, so that only one caller stops it.
func (s *Server) take() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	s.proc = nil
	return p
}

// Pause stops the server process with SIGSTOP: connections are still
// accepted by the kernel but no request is answered, as with a hung
// server or a network partition. Resume undoes it. Pause returns once
// every thread of the process has stopped: a stop signal is delivered
// asynchronously, and a thread still running could answer one more
// request.
func (s *Server) Pause() {
	s.signal(syscall.SIGSTOP)
	pid := s.PID()
	for deadline := time.Now().Add(10 * time.Second); pid != 0 && !allStopped(pid); {
		if time.Now().After(deadline) {
			s.t.Errorf("s3test: process %d did not stop within 10s of SIGSTOP", pid)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// allStopped reports whether every thread of process pid is in the
// stopped state ("T" in /proc/PID/task/TID/stat).
func allStopped(pid int) bool {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, path := range tasks {
		stat, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses
		// and may hold spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) || (stat[i+2] != 'T' && stat[i+2] != 't') {
			return false
		}
	}
	return true
}

// Resume continues a server stopped by Pause.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		s.t.Errorf("s3test: %v to a server that is not running", sig)
		return
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		s.t.Errorf("s3test: %v: %v", sig, err)
	}
}

// Restart starts the server again on the same port and data directory,
// stopping it first if it is running. Objects written before are there
// again; connections to the old process are gone.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("s3test: restart: %v\n%s", err, s.serverLog())
	}
}

// PID returns the process ID of the running server, or 0.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Env returns the standard AWS environment that points an S3 client at
// this server, for a child process: append it to os.Environ(). It also
// keeps the child away from the host's shared config and credentials
// files and from the EC2 instance metadata service, so only these
// settings apply.
//
// It deliberately leaves out AWS_REQUEST_CHECKSUM_CALCULATION and path-style
// settings: a client that needs them must set them itself, as it would
// against any S3-compatible server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + Region,
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client returns an S3 client for this server: static credentials,
// path-style addressing, and request checksums only where an operation
// requires them (aws-sdk-go-v2 sends CRC32 by default, which
// S3-compatible servers may reject).
func (s *Server) Client() *s3.Client {
	cfg := aws.Config{
		Region:                     Region,
		Credentials:                credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(s.Endpoint)
		o.UsePathStyle = true
	})
}

// NewBucket creates a bucket with a fresh name and returns the name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := "nbdd-" + strings.ToLower(randomHex(6))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("s3test: create bucket %s: %v", name, err)
	}
	return name
}

// Usage returns the number of objects under prefix in bucket and their
// total size, as ListObjectsV2 reports them.
func (s *Server) Usage(t testing.TB, bucket, prefix string) (objects int, bytes int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := s3.NewListObjectsV2Paginator(s.Client(), &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("s3test: list %s/%s: %v", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			objects++
			bytes += aws.ToInt64(o.Size)
		}
	}
	return objects, bytes
}
