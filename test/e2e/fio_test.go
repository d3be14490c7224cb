package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// fioJob is the part of fio's JSON output the tests read.
type fioJob struct {
	Name  string `json:"jobname"`
	Error int    `json:"error"`
	Read  fioIO  `json:"read"`
	Write fioIO  `json:"write"`
}

type fioIO struct {
	IOBytes  int64   `json:"io_bytes"`
	TotalIOs int64   `json:"total_ios"`
	IOPS     float64 `json:"iops"`
}

// fio runs fio with the nbd engine against uri and returns its jobs.
func fio(t *testing.T, uri string, args ...string) []fioJob {
	t.Helper()
	requireTool(t, "fio")
	// fio saves verify state files in its working directory.
	out := command{name: "fio", dir: t.TempDir(), args: append([]string{"--ioengine=nbd", "--uri=" + uri, "--output-format=json"}, args...)}.run(t)
	i := strings.IndexByte(out, '{') // fio prints "fio: connected to NBD server" first
	if i < 0 {
		t.Fatalf("fio printed no JSON:\n%s", out)
	}
	var res struct {
		Jobs []fioJob `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out[i:]), &res); err != nil {
		t.Fatalf("fio JSON: %v\n%s", err, out)
	}
	return res.Jobs
}

// TestFIOVerify writes with fio's nbd engine at iodepth 32 (4 KiB random,
// then 1 MiB sequential) with crc32c checksums in every block, and reads
// everything back through the verify phase: a lost, misplaced or torn write
// fails the job.
func TestFIOVerify(t *testing.T) {
	requireTool(t, "fio")
	forEachStrategyAndExport(t, 64<<20, func(t *testing.T, strategy string, export []string) {
		s := startNBDD(t, append([]string{"--strategy", strategy}, export...)...)
		for _, j := range fioVerify(t, s.unixURI(t, "disk")) {
			t.Logf("fio %s %s: %.0f write IOPS", strategy, j.Name, j.Write.IOPS)
		}
	})
}

// fioVerify runs TestFIOVerify's two jobs against uri, an export of at
// least 48 MiB, and fails t unless each wrote and verified all of its
// 16 MiB without an error.
func fioVerify(t *testing.T, uri string) []fioJob {
	t.Helper()
	const size = 16 << 20
	jobs := fio(t, uri,
		"--iodepth=32", "--size=16m", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--name=rand4k", "--rw=randwrite", "--bs=4k", "--offset=0",
		"--name=seq1m", "--rw=write", "--bs=1m", "--offset=32m")
	if len(jobs) != 2 {
		t.Fatalf("fio ran %d jobs; want 2", len(jobs))
	}
	for _, j := range jobs {
		if j.Error != 0 {
			t.Errorf("fio job %s: error %d; want 0", j.Name, j.Error)
		}
		if j.Write.IOBytes != size || j.Read.IOBytes != size {
			t.Errorf("fio job %s: wrote %d, verified %d bytes; want %d each", j.Name, j.Write.IOBytes, j.Read.IOBytes, size)
		}
	}
	return jobs
}
