package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nbdd/nbdd/protocol"
)

// serveS3 starts nbdd serve with one --s3 export per spec (NAME=REF,...)
// on a fresh unix socket.
func (im *s3Image) serveS3(t *testing.T, env []string, specs ...string) *nbdd {
	t.Helper()
	var args []string
	for _, s := range specs {
		args = append(args, "--s3", s)
	}
	return startNBDDEnv(t, env, args...)
}

// etags returns every object under prefix with its ETag.
func (im *s3Image) etags(t *testing.T, prefix string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := map[string]string{}
	p := s3.NewListObjectsV2Paginator(im.srv.Client(), &s3.ListObjectsV2Input{Bucket: &im.bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			out[aws.ToString(o.Key)] = fmt.Sprintf("%s/%d", aws.ToString(o.ETag), aws.ToInt64(o.Size))
		}
	}
	return out
}

func requireSameETags(t *testing.T, got, want map[string]string, what string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s is %q, was %q", what, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %s is new", what, k)
		}
	}
}

// readRange reads n bytes at off through c.
func readRange(t *testing.T, c *rawClient, off, n int) []byte {
	t.Helper()
	errno, b := c.mustDo(t, protocol.Request{Type: protocol.CmdRead, Cookie: uint64(off), Offset: uint64(off), Length: uint32(n)}, nil)
	if errno != protocol.EOK {
		t.Fatalf("READ %d+%d: %v", off, n, errno)
	}
	return b
}

// baseImage writes the test's base content into im's image through a
// writer and returns it: random data in [0, 24M) and [40M, 44M) of 64 MiB,
// nothing written elsewhere.
func baseImage(t *testing.T, im *s3Image, c *rawClient) []byte {
	t.Helper()
	model := make([]byte, 64<<20)
	r := rand.New(rand.NewPCG(11, 11))
	for _, span := range [][2]int{{0, 24 << 20}, {40 << 20, 44 << 20}} {
		for off := span[0]; off < span[1]; off += 1 << 20 {
			b := model[off : off+1<<20]
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			if errno, err := write(c, uint64(off), off, b, false); err != nil || errno != protocol.EOK {
				t.Fatalf("WRITE at %d: %v %v", off, errno, err)
			}
		}
	}
	if errno, err := flush(c, 1); err != nil || errno != protocol.EOK {
		t.Fatalf("FLUSH: %v %v", errno, err)
	}
	return model
}

// TestS3SnapshotClone: a snapshot sealed while a writer serves the image
// holds what was flushed; three read-only nbdd serve it while a fourth
// writes a clone of it; the readers see the snapshot's bytes throughout,
// the clone reads the base where it did not write and zeroes where it
// trimmed, its block status is the union, and the base's objects are
// unchanged afterwards (keys and ETags).
func TestS3SnapshotClone(t *testing.T) {
	requireTool(t, "qemu-img")
	im := newS3Image(t, "64M")
	w := im.serve(t, im.env)
	cw := dialRaw(t, w.sock, "disk")
	snapBytes := baseImage(t, im, cw)
	t.Log(strings.TrimSpace(im.nbdd(t, "image", "snapshot", im.ref, "s1")))
	// Written after the snapshot: not in it.
	if errno, err := write(cw, 9, 0, block(9, 0), true); err != nil || errno != protocol.EOK {
		t.Fatalf("WRITE after the snapshot: %v %v", errno, err)
	}
	w.stop(t)
	snap := im.ref + "@s1"
	_, errOut, status := runNBDD(t, im.env, "serve", "--listen", "unix://"+filepath.Join(t.TempDir(), "s"), "--s3", "disk="+snap)
	if status != 2 || !strings.Contains(errOut, "is a snapshot, which is read-only") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Fatalf("a writable snapshot export: status %d, stderr %q; want 2 and one line saying snapshots are read-only", status, errOut)
	}

	cloneRef := "s3://" + im.bucket + "/vm2"
	im.nbdd(t, "image", "clone", snap, cloneRef)
	before := im.etags(t, "vm1/")

	var readers []*rawClient
	for range 3 {
		s := im.serveS3(t, im.withCacheDir(t.TempDir()), "disk="+snap+",ro")
		readers = append(readers, dialRaw(t, s.sock, "disk"))
	}
	cs := im.serveS3(t, im.env, "disk="+cloneRef)
	cc := dialRaw(t, cs.sock, "disk")

	// The readers read random ranges of the snapshot while the clone is
	// written.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var readErr error
	var mu sync.Mutex
	for i, rc := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 3))
			for n := 0; ; n++ {
				select {
				case <-stop:
					if n == 0 {
						mu.Lock()
						readErr = fmt.Errorf("reader %d read nothing", i)
						mu.Unlock()
					}
					return
				default:
				}
				off := r.IntN(64<<20-1<<20) &^ 4095
				errno, got, err := rc.do(protocol.Request{Type: protocol.CmdRead, Cookie: uint64(n), Offset: uint64(off), Length: 1 << 20}, nil)
				if err != nil || errno != protocol.EOK || !bytes.Equal(got, snapBytes[off:off+1<<20]) {
					mu.Lock()
					readErr = fmt.Errorf("reader %d at %d: %v %v, or the bytes differ from the snapshot's", i, off, errno, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	model := bytes.Clone(snapBytes)
	for k := range 32 {
		off := k * (2 << 20)
		b := block(20, k)
		if errno, err := write(cc, uint64(k), off, b, k%8 == 7); err != nil || errno != protocol.EOK {
			t.Fatalf("clone WRITE at %d: %v %v", off, errno, err)
		}
		copy(model[off:], b)
	}
	trim := protocol.Request{Type: protocol.CmdTrim, Cookie: 100, Offset: 8 << 20, Length: 4 << 20}
	if errno, _ := cc.mustDo(t, trim, nil); errno != protocol.EOK {
		t.Fatalf("clone TRIM: %v", errno)
	}
	clear(model[8<<20 : 12<<20])
	if errno, err := flush(cc, 101); err != nil || errno != protocol.EOK {
		t.Fatalf("clone FLUSH: %v %v", errno, err)
	}
	for off := 0; off < 64<<20; off += 4 << 20 {
		if got := readRange(t, cc, off, 4<<20); !bytes.Equal(got, model[off:off+4<<20]) {
			t.Fatalf("the clone at %d+4M: not the base where unwritten, its writes where written", off)
		}
	}
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}

	// Block status: the clone's trim masks the base's data; the base's
	// never-written range is a hole; the clone's writes are data.
	m := qemuImgMapS3(t, cs.unixURI(t, "disk"))
	for _, tc := range []struct {
		off  int64
		data bool
	}{{8 << 20, false}, {10 << 20, false}, {13 << 20, true}, {31 << 20, false}, {32 << 20, true}, {41 << 20, true}, {51 << 20, false}} {
		if got := m.dataAt(tc.off); got != tc.data {
			t.Errorf("block status at %d MiB: data %v; want %v (map %+v)", tc.off>>20, got, tc.data, m)
		}
	}
	cs.stop(t)
	requireSameETags(t, im.etags(t, "vm1/"), before, "the base after a clone was served and written")

	// A fresh nbdd reads the clone as it was written.
	cs2 := im.serveS3(t, im.withCacheDir(t.TempDir()), "disk="+cloneRef+",ro")
	got := readRange(t, dialRaw(t, cs2.sock, "disk"), 0, 32<<20)
	if !bytes.Equal(got, model[:32<<20]) {
		t.Fatal("a fresh reader of the clone reads other bytes")
	}
	info := im.nbdd(t, "image", "info", "--json", cloneRef)
	var in struct {
		Base           string `json:"base"`
		AllocatedBytes int64  `json:"allocated_bytes"`
	}
	if err := json.Unmarshal([]byte(info), &in); err != nil {
		t.Fatal(err)
	}
	// 32 blocks of 64 KiB written, two of them trimmed since.
	if in.Base != snap || in.AllocatedBytes != 30*(64<<10) {
		t.Fatalf("image info of the clone: base %q, allocated %d; want %q and %d (its own writes only)", in.Base, in.AllocatedBytes, snap, 30*(64<<10))
	}
}

// mapS3 is qemu-img map's view of an export.
type mapS3 []struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
}

func (m mapS3) dataAt(off int64) bool {
	for _, e := range m {
		if off >= e.Start && off < e.Start+e.Length {
			return e.Data && !e.Zero
		}
	}
	return false
}

func qemuImgMapS3(t *testing.T, uri string) mapS3 {
	t.Helper()
	out := command{name: "qemu-img", args: []string{"map", "--output=json", "-f", "raw", uri}}.run(t)
	var m mapS3
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	return m
}

// TestS3CloneLifecycle: the base's GC keeps a snapshot that has clones;
// removing that snapshot, or the base, is refused; flatten writes the
// clone out whole; removing the clone leaves the base's objects as they
// were, after which the snapshot and the base can go.
func TestS3CloneLifecycle(t *testing.T) {
	im := newS3Image(t, "64M")
	w := im.serve(t, im.env)
	cw := dialRaw(t, w.sock, "disk")
	snapBytes := baseImage(t, im, cw)
	w.stop(t)
	im.nbdd(t, "image", "snapshot", im.ref, "s1")
	snap := im.ref + "@s1"
	cloneRef := "s3://" + im.bucket + "/vm2"
	im.nbdd(t, "image", "clone", snap, cloneRef)
	cs := im.serveS3(t, im.env, "disk="+cloneRef)
	cc := dialRaw(t, cs.sock, "disk")
	model := bytes.Clone(snapBytes)
	if errno, err := write(cc, 1, 1<<20, block(30, 0), true); err != nil || errno != protocol.EOK {
		t.Fatalf("clone WRITE: %v %v", errno, err)
	}
	copy(model[1<<20:], block(30, 0))
	cs.stop(t)

	// The base overwritten everywhere and collected: the clone still reads
	// the snapshot.
	w2 := im.serve(t, im.env)
	c2 := dialRaw(t, w2.sock, "disk")
	for off := 0; off < 64<<20; off += 1 << 20 {
		if errno, err := write(c2, uint64(off), off, bytes.Repeat([]byte{0xee}, 1<<20), false); err != nil || errno != protocol.EOK {
			t.Fatal(errno, err)
		}
	}
	w2.stop(t)
	t.Log(strings.TrimSpace(im.nbdd(t, "image", "gc", im.ref)))
	cs2 := im.serveS3(t, im.withCacheDir(t.TempDir()), "disk="+cloneRef+",ro")
	if got := readRange(t, dialRaw(t, cs2.sock, "disk"), 0, 32<<20); !bytes.Equal(got, model[:32<<20]) {
		t.Fatal("after the base's GC the clone reads other bytes")
	}
	cs2.stop(t)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"image", "rm", snap}, "has clones: " + cloneRef},
		{[]string{"image", "rm", im.ref}, "has snapshots: s1"},
	} {
		_, errOut, status := runNBDD(t, im.env, tc.args...)
		if status != 1 || !strings.Contains(errOut, tc.want) || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Fatalf("nbdd %s: status %d, stderr %q; want 1 and one line containing %q", strings.Join(tc.args, " "), status, errOut, tc.want)
		}
	}

	flat := filepath.Join(t.TempDir(), "flat.raw")
	im.nbdd(t, "image", "flatten", cloneRef, flat)
	got, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("the flattened clone differs from the clone")
	}
	if _, errOut, status := runNBDD(t, im.env, "image", "flatten", cloneRef, flat); status == 0 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("flatten over an existing file: status %d, %q", status, errOut)
	}
	flatRef := "s3://" + im.bucket + "/flat"
	im.nbdd(t, "image", "flatten", cloneRef, flatRef)
	out := filepath.Join(t.TempDir(), "out.raw")
	im.nbdd(t, "image", "export", flatRef, out)
	requireSameFiles(t, flat, out)
	if strings.Contains(im.nbdd(t, "image", "info", flatRef), "base:") {
		t.Fatal("the image flattened to S3 still has a base")
	}

	before := im.etags(t, "vm1/")
	im.nbdd(t, "image", "rm", cloneRef)
	if n, _ := im.srv.Usage(t, im.bucket, "vm2/"); n != 0 {
		t.Fatalf("%d objects of the removed clone remain", n)
	}
	after := im.etags(t, "vm1/")
	for k := range before {
		if strings.HasPrefix(k, "vm1/clones/") {
			delete(before, k) // the clone's registration goes with it
		}
	}
	requireSameETags(t, after, before, "the base after the clone was removed")
	im.nbdd(t, "image", "rm", snap)
	im.nbdd(t, "image", "rm", im.ref)
	if n, _ := im.srv.Usage(t, im.bucket, "vm1/"); n != 0 {
		t.Fatalf("%d objects of the removed base remain", n)
	}
}

// TestS3ClonesShareBaseMemory: one nbdd serving four clones of one
// snapshot, every client reading its whole disk, holds the base's read
// cache once: its peak RSS against four nbdd, one clone each. The
// request buffers are bounded to 16 MiB (--memory-budget), so the cache
// is most of what each process holds. NBDD_S3_CLONES and
// NBDD_S3_CLONE_BASE change the number of clones and the base's size, for
// docs/s3.md's larger figures.
func TestS3ClonesShareBaseMemory(t *testing.T) {
	requireTool(t, "nbdcopy")
	const cache = 64 << 20
	clones, base := 4, "256M"
	if v := os.Getenv("NBDD_S3_CLONES"); v != "" {
		if _, err := fmt.Sscan(v, &clones); err != nil || clones < 1 {
			t.Fatalf("NBDD_S3_CLONES=%q: want a number of clones", v)
		}
	}
	if v := os.Getenv("NBDD_S3_CLONE_BASE"); v != "" {
		base = v
	}
	im := newS3Image(t, base)
	env := append(im.withCacheDir(t.TempDir()), "NBDD_MEMORY_BUDGET=16MiB")
	w := im.serve(t, im.env)
	command{name: "nbdcopy", args: []string{"--flush", "--", "[", "nbdkit", "random", base, "]", w.unixURI(t, "disk")}}.run(t)
	w.stop(t)
	im.nbdd(t, "image", "snapshot", im.ref, "s1")
	var specs []string
	for i := range clones {
		ref := fmt.Sprintf("s3://%s/c%d", im.bucket, i)
		im.nbdd(t, "image", "clone", im.ref+"@s1", ref)
		specs = append(specs, fmt.Sprintf("c%d=%s,cache=%d", i, ref, cache))
	}
	readAll := func(s *nbdd, name string) {
		command{name: "nbdcopy", args: []string{s.unixURI(t, name), "null:"}}.run(t)
	}
	one := im.serveS3(t, env, specs...)
	for i := range clones {
		readAll(one, fmt.Sprintf("c%d", i))
	}
	shared := vmHWM(t, one.cmd.Process.Pid)
	one.stop(t)
	var separate int64
	for i := range clones {
		s := im.serveS3(t, env, specs[i])
		readAll(s, fmt.Sprintf("c%d", i))
		separate += vmHWM(t, s.cmd.Process.Pid)
		s.stop(t)
	}
	t.Logf("%d clones of a %s snapshot, each read whole, cache=%d MiB: one nbdd peaks at %d MiB RSS; %d nbdd, one clone each, at %d MiB together",
		clones, base, cache>>20, shared>>20, clones, separate>>20)
	if perProcess := separate / int64(clones); shared > perProcess+cache {
		t.Errorf("one nbdd serving %d clones peaked at %d MiB; want less than one cache (%d MiB) above what an nbdd serving one clone peaks at (%d MiB)",
			clones, shared>>20, cache>>20, perProcess>>20)
	}
	if shared*2 > separate {
		t.Errorf("one nbdd for %d clones peaked at %d MiB, %d nbdd at %d MiB together; want under half", clones, shared>>20, clones, separate>>20)
	}
}
