package s3store

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/nbdd/nbdd/backend/logdisk"
)

// Ranged GETs, the read path's one request, go out as presigned
// requests on the SDK's HTTP client: the SDK signs a GET of each object
// (SigV4 in the query) once per presignReuse, and each ranged GET is then
// that URL with a Range header, which SigV4 leaves unsigned. A GET through
// the SDK's client builds and runs its middleware stack of some forty
// steps for every request: measured, 491 allocations and about 120 µs of
// CPU per 256 KiB GET of the 310 µs the whole GET cost the client
// (BenchmarkReadAtv); the presigned GET makes 81. Retries are
// the engine's (logdisk retries every error that is not Permanent, with
// backoff), as for every other request.

const (
	// presignExpiry is how long a presigned URL stays valid at the server.
	presignExpiry = 15 * time.Minute
	// presignReuse is how long a presigned URL is used: well within its
	// expiry, so a URL is never sent after it has expired, even against a
	// server whose clock is ahead of ours by minutes.
	presignReuse = 5 * time.Minute
	// maxPresigned bounds the URLs kept (about 1 KiB each): one per
	// segment read in the last presignReuse, up to 64 GiB of 16 MiB
	// segments read at random within it.
	maxPresigned = 4096
)

// presignedURL is a GET of one object, signed at made.
type presignedURL struct {
	url    string
	header http.Header // signed headers other than Host
	made   time.Time
}

// presigner keeps a presigned GET URL per object.
type presigner struct {
	client *s3.PresignClient
	bucket string
	mu     sync.Mutex
	urls   map[string]presignedURL
}

func newPresigner(client *s3.Client, bucket string) *presigner {
	return &presigner{
		client: s3.NewPresignClient(client, s3.WithPresignExpires(presignExpiry)),
		bucket: bucket,
		urls:   map[string]presignedURL{},
	}
}

// get returns a URL for a GET of key and whether it was kept from
// before (so a 403 may mean credentials that have expired since).
func (p *presigner) get(ctx context.Context, key string) (presignedURL, bool, error) {
	now := time.Now()
	p.mu.Lock()
	u, ok := p.urls[key]
	p.mu.Unlock()
	if ok && now.Sub(u.made) < presignReuse {
		return u, true, nil
	}
	req, err := p.client.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &p.bucket, Key: &key})
	if err != nil {
		return presignedURL{}, false, err
	}
	u = presignedURL{url: req.URL, header: req.SignedHeader.Clone(), made: now}
	u.header.Del("Host") // net/http sends the URL's
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.urls) >= maxPresigned {
		for k, old := range p.urls {
			if now.Sub(old.made) >= presignReuse {
				delete(p.urls, k)
			}
		}
		for k := range p.urls { // random order: a quarter, at random
			if len(p.urls) < maxPresigned*3/4 {
				break
			}
			delete(p.urls, k)
		}
	}
	p.urls[key] = u
	return u, false, nil
}

// forget drops key's URL, so the next get signs a new one.
func (p *presigner) forget(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.urls, key)
}

// rangedGet sends a GET of n bytes of key from off and returns the
// response, whose body holds them (fewer where the object ends), or the
// S3 error. A server that ignores the range is an error that retrying
// cannot cure.
func (s *Store) rangedGet(ctx context.Context, key string, off, n int64) (*http.Response, error) {
	resp, err := s.presignedGet(ctx, key, "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+n-1, 10))
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		return resp, nil
	case off == 0:
		return resp, nil // the whole object, from the start: the range's bytes come first
	}
	resp.Body.Close()
	return nil, &logdisk.Permanent{Err: fmt.Errorf("the S3 server at %s ignored the Range of a GET of %s (200, not 206): nbdd needs ranged GETs", s.endpoint, key)}
}

// wholeGet sends a GET of the whole object key, without a Range (S3
// GetObject), and returns the response, a 200, or the S3 error. A server
// may serve a whole object more cheaply than any range of it: versitygw
// hands an object's file to sendfile(2), where it copies a range through
// a 1 MiB buffer of its own (docs/s3.md, "whole-object GETs").
func (s *Store) wholeGet(ctx context.Context, key string) (*http.Response, error) {
	resp, err := s.presignedGet(ctx, key, "")
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, &logdisk.Permanent{Err: fmt.Errorf("the S3 server at %s answered a GET of all of %s with %d, not 200", s.endpoint, key, resp.StatusCode)}
	}
	return resp, nil
}

// presignedGet sends a presigned GET of key, with a Range header unless
// rng is empty, and returns a 200 or 206 response or the S3 error. A URL
// kept from before that the server refuses with 403 is signed again once:
// the credentials it was signed with may have expired.
func (s *Store) presignedGet(ctx context.Context, key, rng string) (*http.Response, error) {
	for {
		u, kept, err := s.presign.get(ctx, key)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.url, nil)
		if err != nil {
			return nil, err
		}
		for k, v := range u.header {
			req.Header[k] = v
		}
		if rng != "" {
			req.Header["Range"] = []string{rng}
		}
		resp, err := s.http.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
			return resp, nil
		}
		err = responseError(resp)
		if resp.StatusCode == http.StatusForbidden && kept {
			s.presign.forget(key)
			continue
		}
		return nil, err
	}
}

// statusError is an S3 error response to a presigned request: its HTTP
// status and the Code and Message of its XML body. It is a smithy.APIError,
// as the SDK's errors are, so classify treats both alike.
type statusError struct {
	status        int
	code, message string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("http %d %s: %s", e.status, e.code, e.message)
}
func (e *statusError) ErrorCode() string    { return e.code }
func (e *statusError) ErrorMessage() string { return e.message }
func (e *statusError) ErrorFault() smithy.ErrorFault {
	if e.status >= 500 {
		return smithy.FaultServer
	}
	return smithy.FaultClient
}

// responseError reads an error response (S3 "Error responses": an XML
// Error element with Code and Message) and closes its body.
func responseError(resp *http.Response) error {
	defer resp.Body.Close()
	var body struct {
		Code    string
		Message string
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err == nil {
		err = xml.Unmarshal(raw, &body)
	}
	if err != nil || body.Code == "" {
		body.Code = http.StatusText(resp.StatusCode)
	}
	return &statusError{status: resp.StatusCode, code: body.Code, message: body.Message}
}

// httpStatus returns the HTTP status of an S3 error, or 0.
func httpStatus(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.status
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}
