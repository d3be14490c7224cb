package s3test

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stats counts the requests a server answered, from its access log.
type Stats struct {
	// Requests is the number of S3 requests, including failed ones.
	Requests int
	// Operations counts requests by S3 operation name: "PutObject",
	// "GetObject", "ListObjectsV2", "DeleteObjects", ...
	Operations map[string]int
	// Failed counts requests answered with an HTTP status of 400 or more.
	Failed int
	// BytesIn is the object data received: the sizes of PutObject and
	// UploadPart bodies. versitygw does not log the size of GET bodies.
	BytesIn int64
}

// Stats reads the access log written so far. versitygw writes a line per
// request, unbuffered, before the response completes, so a request whose
// answer the caller has seen is counted.
func (s *Server) Stats() (Stats, error) {
	f, err := os.Open(s.AccessLog)
	if err != nil {
		return Stats{}, err
	}
	defer f.Close()
	return parseAccessLog(f)
}

// Sub returns the requests counted in st but not in before, for the
// requests of one phase of a test.
func (st Stats) Sub(before Stats) Stats {
	d := Stats{
		Requests:   st.Requests - before.Requests,
		Failed:     st.Failed - before.Failed,
		BytesIn:    st.BytesIn - before.BytesIn,
		Operations: map[string]int{},
	}
	for op, n := range st.Operations {
		if n -= before.Operations[op]; n != 0 {
			d.Operations[op] = n
		}
	}
	return d
}

// accessRecord is the part of an access log line that Stats uses.
type accessRecord struct {
	operation  string
	status     int
	objectSize int64
}

// parseAccessLog reads versitygw's access log (s3log/file.go: AWS's server
// access log fields, space-separated, one request a line, with "log starts"
// lines at each open).
func parseAccessLog(f *os.File) (Stats, error) {
	st := Stats{Operations: map[string]int{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "log starts ") {
			continue
		}
		r, err := parseAccessLine(line)
		if err != nil {
			return st, fmt.Errorf("%s: %w", f.Name(), err)
		}
		st.Requests++
		st.Operations[r.operation]++
		if r.status >= 400 {
			st.Failed++
		}
		if r.operation == "PutObject" || r.operation == "UploadPart" {
			st.BytesIn += r.objectSize
		}
	}
	return st, sc.Err()
}

// parseAccessLine parses one request line. Its fields are: bucket owner,
// bucket, [time with a space inside], remote IP, requester, request ID,
// operation, key, request URI, HTTP status, error code, bytes sent,
// object size, and more that Stats does not use. A key may contain spaces,
// so the fields after the key are found from the request URI, which is
// URL-encoded and starts with a slash.
func parseAccessLine(line string) (accessRecord, error) {
	f := strings.Fields(line)
	const op = 7
	for uri := op + 2; uri+4 < len(f); uri++ {
		if !strings.HasPrefix(f[uri], "/") {
			continue
		}
		status, err := strconv.Atoi(f[uri+1])
		if err != nil || status < 100 || status > 599 {
			continue
		}
		size, err := strconv.ParseInt(f[uri+4], 10, 64)
		if err != nil {
			continue
		}
		return accessRecord{
			operation:  strings.TrimPrefix(f[op], "s3_"),
			status:     status,
			objectSize: size,
		}, nil
	}
	return accessRecord{}, fmt.Errorf("unrecognized access log line %q", line)
}
