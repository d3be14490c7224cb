package s3store

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"testing"
)

// FuzzResponseError decodes arbitrary error responses: never a panic,
// always a statusError with the response's status and a code, and never
// more than 64 KiB of the body read.
func FuzzResponseError(f *testing.F) {
	f.Add(503, []byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`))
	f.Add(404, []byte(`<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>k</Key></Error>`))
	f.Add(403, []byte(""))
	f.Add(500, []byte("<Error><Code>"))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		r := &countingReader{r: io.MultiReader(bytes.NewReader(body), zeros{})}
		err := responseError(&http.Response{StatusCode: status, Body: io.NopCloser(r)})
		var se *statusError
		if !errors.As(err, &se) || se.status != status || se.code == "" && http.StatusText(status) != "" {
			t.Fatalf("responseError(%d, %q) = %#v; want a statusError with the status and a code", status, body, err)
		}
		if r.n > 64<<10 {
			t.Fatalf("read %d bytes of the body; want at most 64 KiB", r.n)
		}
	})
}

// zeros is an endless body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
