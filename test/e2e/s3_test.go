package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/internal/s3test"
	"github.com/nbdd/nbdd/protocol"
)

// s3Image is one image in a bucket of a versitygw started for the test,
// with the environment an nbdd needs to reach it (the standard AWS
// variables and its own journal root).
type s3Image struct {
	srv    *s3test.Server
	bucket string
	ref    string
	env    []string
}

func newS3Image(t *testing.T, size string) *s3Image {
	t.Helper()
	srv := s3test.Start(t)
	im := &s3Image{srv: srv, bucket: srv.NewBucket(t)}
	im.ref = "s3://" + im.bucket + "/vm1"
	im.env = im.withCacheDir(t.TempDir())
	if size != "" {
		im.nbdd(t, "image", "create", "--size", size, im.ref)
	}
	return im
}

// withCacheDir is the image's environment with journals under dir.
func (im *s3Image) withCacheDir(dir string) []string {
	return append(append([]string{}, im.srv.Env()...), "NBDD_S3_CACHE_DIR="+dir)
}

// nbdd runs an nbdd command against the image's server and returns its
// stdout; it fails the test unless nbdd exits 0.
func (im *s3Image) nbdd(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, status := runNBDDLong(t, im.env, args...)
	if status != 0 {
		t.Fatalf("nbdd %s: status %d\n%s", strings.Join(args, " "), status, errOut)
	}
	return out
}

// runNBDDLong is runNBDD with toolTimeout, for image commands that move
// data.
func runNBDDLong(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nbddBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("nbdd %s: still running after %v", strings.Join(args, " "), toolTimeout)
	case errors.As(err, &ee):
		return out.String(), errOut.String(), ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errOut.String(), 0
}

// serve starts nbdd serve with the image as export "disk" (options
// appended to the --s3 value) on a fresh unix socket.
func (im *s3Image) serve(t *testing.T, env []string, opts ...string) *nbdd {
	t.Helper()
	return im.serveS3(t, env, strings.Join(append([]string{"disk=" + im.ref}, opts...), ","))
}

// block is the content of block i of a test run: 64 KiB unique to i and seed.
func block(seed uint64, i int) []byte {
	b := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	for j := 0; j < len(b); j += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[j+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func write(c *rawClient, cookie uint64, off int, data []byte, fua bool) (protocol.Errno, error) {
	r := protocol.Request{Type: protocol.CmdWrite, Cookie: cookie, Offset: uint64(off), Length: uint32(len(data))}
	if fua {
		r.Flags = protocol.CmdFlagFUA
	}
	errno, _, err := c.do(r, data)
	return errno, err
}

func flush(c *rawClient, cookie uint64) (protocol.Errno, error) {
	errno, _, err := c.do(protocol.Request{Type: protocol.CmdFlush, Cookie: cookie}, nil)
	return errno, err
}

// TestS3QEMUImgConvert copies a 1 GiB random image into an S3 export with
// qemu-img and back out through a second nbdd process (so the reads come
// from S3, not from the first one's journal), then compares.
func TestS3QEMUImgConvert(t *testing.T) {
	requireTool(t, "qemu-img")
	im := newS3Image(t, "1G")
	src := filepath.Join(t.TempDir(), "src.img")
	if err := writeRandomFile(src, 1<<30, 7); err != nil {
		t.Fatal(err)
	}
	s := im.serve(t, im.env)
	start := time.Now()
	command{name: "qemu-img", args: []string{"convert", "-n", "-f", "raw", "-O", "raw", src, s.unixURI(t, "disk")}}.run(t)
	t.Logf("qemu-img convert in: %.0f MiB/s (FLUSH durable in S3)", 1024/time.Since(start).Seconds())
	s.stop(t)
	s2 := im.serve(t, im.env, "ro")
	dst := filepath.Join(t.TempDir(), "dst.img")
	start = time.Now()
	command{name: "qemu-img", args: []string{"convert", "-f", "raw", "-O", "raw", s2.unixURI(t, "disk"), dst}}.run(t)
	t.Logf("qemu-img convert out (cold, from S3): %.0f MiB/s", 1024/time.Since(start).Seconds())
	requireSameFiles(t, src, dst)
}

// TestS3FIOVerify: fio's 4 KiB random writes at iodepth 32 with crc32c
// in every block, verified by reading back.
func TestS3FIOVerify(t *testing.T) {
	requireTool(t, "fio")
	im := newS3Image(t, "64M")
	s := im.serve(t, im.env)
	jobs := fio(t, s.unixURI(t, "disk"),
		"--iodepth=32", "--size=64m", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--name=rand4k", "--rw=randwrite", "--bs=4k", "--fsync=16")
	if len(jobs) != 1 || jobs[0].Error != 0 {
		t.Fatalf("fio: %+v", jobs)
	}
	t.Logf("4 KiB random writes, fsync every 16: %.0f IOPS", jobs[0].Write.IOPS)
}

// TestS3Kill9 kills nbdd with SIGKILL while four connections write, and
// restarts it on the same journal: every write acknowledged by a FLUSH or
// with FUA (the test logs them) reads back intact, and no block is torn.
func TestS3Kill9(t *testing.T) {
	im := newS3Image(t, "256M")
	s := im.serve(t, im.env)
	const conns, perConn = 4, 64
	var mu sync.Mutex
	acked := map[int]bool{}   // blocks acknowledged by FLUSH or FUA
	written := map[int]bool{} // blocks whose WRITE was acknowledged
	var wg sync.WaitGroup
	for c := range conns {
		cl := dialRaw(t, s.sock, "disk")
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pending []int
			for k := range perConn {
				i := c*perConn + k
				fua := k%5 == 4
				if errno, err := write(cl, uint64(i), i*(64<<10), block(1, i), fua); err != nil || errno != protocol.EOK {
					return // the kill
				}
				mu.Lock()
				written[i] = true
				if fua {
					acked[i] = true
				}
				mu.Unlock()
				pending = append(pending, i)
				if k%8 == 7 {
					if errno, err := flush(cl, 1<<32+uint64(i)); err != nil || errno != protocol.EOK {
						return
					}
					mu.Lock()
					for _, p := range pending {
						acked[p] = true
					}
					mu.Unlock()
					pending = pending[:0]
				}
			}
		}()
	}
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= conns*perConn/3 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	s.kill(t)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("killed with %d blocks acknowledged by FLUSH or FUA, %d writes acknowledged", len(acked), len(written))

	s2 := im.serve(t, im.env) // same journal: resumes, no takeover
	cl := dialRaw(t, s2.sock, "disk")
	zero := make([]byte, 64<<10)
	for i := range conns * perConn {
		errno, got := cl.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: uint64(i), Offset: uint64(i * (64 << 10)), Length: 64 << 10}, nil)
		if errno != protocol.EOK {
			t.Fatalf("READ block %d: %v", i, errno)
		}
		switch {
		case bytes.Equal(got, block(1, i)):
		case acked[i]:
			t.Fatalf("block %d was acknowledged by FLUSH or FUA and is lost", i)
		case !bytes.Equal(got, zero):
			t.Fatalf("block %d is torn: neither its data nor zeroes", i)
		}
	}
}

// TestS3ServerRestart kills the S3 server during writes: FLUSH fails
// while it is down, nothing acknowledged is lost, and once it is back the
// uploads resume by themselves and FLUSH succeeds.
func TestS3ServerRestart(t *testing.T) {
	im := newS3Image(t, "64M")
	s := im.serve(t, im.env, "flush-timeout=2s")
	cl := dialRaw(t, s.sock, "disk")
	if errno, err := write(cl, 1, 0, block(2, 0), false); err != nil || errno != protocol.EOK {
		t.Fatalf("WRITE: %v %v", errno, err)
	}
	if errno, err := flush(cl, 2); err != nil || errno != protocol.EOK {
		t.Fatalf("FLUSH with the server up: %v %v", errno, err)
	}
	im.srv.Kill()
	if errno, err := write(cl, 3, 64<<10, block(2, 1), false); err != nil || errno != protocol.EOK {
		t.Fatalf("WRITE with the server down (write-back): %v %v", errno, err)
	}
	cl.conn.SetDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	if errno, err := flush(cl, 4); err != nil || errno != protocol.EIO {
		t.Fatalf("FLUSH with the server down: %v %v; want EIO", errno, err)
	}
	t.Logf("FLUSH failed after %v with the server down", time.Since(start).Round(time.Millisecond))
	if !s.stderr.waitFor("FLUSH failed", time.Second) {
		t.Error("nbdd logged nothing about the failed FLUSH")
	}
	if errno, err := write(cl, 5, 128<<10, block(2, 2), true); err != nil || errno != protocol.EIO {
		t.Fatalf("FUA WRITE with the server down: %v %v; want EIO", errno, err)
	}
	readBack(t, cl, 64<<10, block(2, 1), "an unflushed write while the server is down")
	im.srv.Restart()
	// The uploads resume by themselves (their backoff is at most 5 s); a
	// FLUSH succeeds once they are in.
	cl.conn.SetDeadline(time.Now().Add(60 * time.Second))
	deadline := time.Now().Add(30 * time.Second)
	for cookie := uint64(6); ; cookie++ {
		errno, err := flush(cl, cookie)
		if err != nil {
			t.Fatal(err)
		}
		if errno == protocol.EOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("FLUSH still fails 30 s after the server came back: %v", errno)
		}
	}
	s.stop(t)
	s2 := im.serve(t, im.env, "ro")
	c2 := dialRaw(t, s2.sock, "disk")
	for i := range 3 {
		readBack(t, c2, uint64(i*(64<<10)), block(2, i), fmt.Sprintf("block %d after the restart", i))
	}
}

// TestS3TwoWriters: a second nbdd refuses the image without takeover;
// with takeover it fences the first, whose later writes fail and are never
// visible to any reader.
func TestS3TwoWriters(t *testing.T) {
	im := newS3Image(t, "64M")
	a := im.serve(t, im.env)
	ca := dialRaw(t, a.sock, "disk")
	if errno, err := write(ca, 1, 0, block(3, 0), false); err != nil || errno != protocol.EOK {
		t.Fatal(errno, err)
	}
	if errno, err := flush(ca, 2); err != nil || errno != protocol.EOK {
		t.Fatal(errno, err)
	}
	other := im.withCacheDir(t.TempDir()) // another machine: its own journal
	_, errOut, status := runNBDD(t, other, "serve", "--listen", "unix://"+filepath.Join(t.TempDir(), "s"), "--s3", "disk="+im.ref)
	if status != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "open for writing by another nbdd") {
		t.Fatalf("second writer without takeover: status %d, stderr %q; want 1 and one line saying the image is in use", status, errOut)
	}
	b := im.serve(t, other, "takeover")
	if errno, err := write(ca, 3, 64<<10, block(3, 1), false); err != nil {
		t.Fatal(err)
	} else if errno == protocol.EOK {
		if errno, err := flush(ca, 4); err != nil || errno != protocol.EIO {
			t.Fatalf("fenced writer's FLUSH: %v %v; want EIO", errno, err)
		}
	}
	if errno, _ := ca.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: 5, Length: 4096}, nil); errno != protocol.EIO {
		t.Fatalf("fenced writer's READ: %v; want EIO", errno)
	}
	zero := make([]byte, 64<<10)
	cb := dialRaw(t, b.sock, "disk")
	readBack(t, cb, 0, block(3, 0), "the taker reads the first writer's flushed block")
	readBack(t, cb, 64<<10, zero, "the taker never sees the fenced write")
	ro := im.serve(t, im.withCacheDir(t.TempDir()), "ro")
	cr := dialRaw(t, ro.sock, "disk")
	readBack(t, cr, 0, block(3, 0), "a reader sees the flushed block")
	readBack(t, cr, 64<<10, zero, "a reader never sees the fenced write")
	// The fenced nbdd cannot flush on the way out: it says so and exits 1.
	a.exited = true
	a.terminate(t)
	if err := a.wait(); err == nil || !a.stderr.waitFor("fenced", time.Second) {
		t.Fatalf("fenced nbdd after SIGTERM: %v; want exit status 1 and a log line saying it is fenced\n%s", err, a.stderr)
	}
}

// TestS3GC overwrites the export twice (random 4 KiB writes, every block
// once per pass), then runs nbdd image gc: the bucket holds at most 1.5x
// the live data afterwards, and the data is unchanged.
func TestS3GC(t *testing.T) {
	requireTool(t, "fio")
	requireTool(t, "qemu-img")
	const size = 128 << 20
	im := newS3Image(t, "128M")
	s := im.serve(t, im.env)
	uri := s.unixURI(t, "disk")
	src := filepath.Join(t.TempDir(), "src.img")
	if err := writeRandomFile(src, size, 9); err != nil {
		t.Fatal(err)
	}
	command{name: "qemu-img", args: []string{"convert", "-n", "-f", "raw", "-O", "raw", src, uri}}.run(t)
	for pass := range 2 {
		jobs := fio(t, uri, "--iodepth=32", "--size=128m", "--name=over", "--rw=randwrite", "--bs=4k",
			fmt.Sprintf("--randseed=%d", pass+1), "--end_fsync=1")
		if len(jobs) != 1 || jobs[0].Error != 0 {
			t.Fatalf("fio pass %d: %+v", pass, jobs)
		}
	}
	before := filepath.Join(t.TempDir(), "before.img")
	command{name: "qemu-img", args: []string{"convert", "-f", "raw", "-O", "raw", uri, before}}.run(t)
	s.stop(t)
	_, stored := im.srv.Usage(t, im.bucket, "vm1/")
	t.Logf("before gc: %d MiB stored for %d MiB live", stored>>20, size>>20)
	t.Log(strings.TrimSpace(im.nbdd(t, "image", "gc", im.ref)))
	objects, stored := im.srv.Usage(t, im.bucket, "vm1/")
	t.Logf("after gc: %d objects, %d MiB stored", objects, stored>>20)
	if float64(stored) > 1.5*size {
		t.Errorf("after gc the image takes %d bytes in the bucket; want at most 1.5 x %d", stored, size)
	}
	after := filepath.Join(t.TempDir(), "after.img")
	im.nbdd(t, "image", "export", im.ref, after)
	requireSameFiles(t, before, after)
}

// TestS3CLIErrors: each S3 mistake gets status 1 and one line that names
// it, never a stack trace.
func TestS3CLIErrors(t *testing.T) {
	im := newS3Image(t, "16M")
	s := im.serve(t, im.env)
	_ = s
	bad := func(kv string) []string {
		k, _, _ := strings.Cut(kv, "=")
		var env []string
		for _, e := range im.env {
			if !strings.HasPrefix(e, k+"=") {
				env = append(env, e)
			}
		}
		return append(env, kv)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"missing bucket", im.env, []string{"image", "info", "s3://no-such-bucket/x"}, "does not exist"},
		{"bad credentials", bad("AWS_SECRET_ACCESS_KEY=wrong"), []string{"image", "info", im.ref}, "credentials"},
		{"unreachable endpoint", bad("AWS_ENDPOINT_URL=http://127.0.0.1:1"), []string{"image", "info", im.ref}, "cannot reach"},
		{"no image", im.env, []string{"image", "info", "s3://" + im.bucket + "/none"}, "no image there"},
		{"image exists", im.env, []string{"image", "create", "--size", "1M", im.ref}, "exists"},
		{"open for writing", im.withCacheDir(t.TempDir()), []string{"image", "gc", im.ref}, "open for writing"},
		{"bad ref", im.env, []string{"image", "info", "s3://"}, "s3://BUCKET/PREFIX"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, status := runNBDD(t, tc.env, tc.args...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if status == 0 || len(lines) != 1 || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "goroutine") {
				t.Fatalf("status %d, stderr %q; want one line containing %q", status, errOut, tc.want)
			}
		})
	}
}
