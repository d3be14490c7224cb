package s3test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"
)

// ctx returns a context that ends with the test or after 30 s.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func put(t *testing.T, c *s3.Client, bucket, key string, body []byte) {
	t.Helper()
	_, err := c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(body)})
	require.NoError(t, err, "PUT %s", key)
}

func get(t *testing.T, c *s3.Client, bucket, key string) []byte {
	t.Helper()
	out, err := c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	require.NoError(t, err, "GET %s", key)
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	require.NoError(t, err)
	return b
}

// status returns the HTTP status of a failed S3 call, or 0 if err carries
// none (no answer at all, or no error).
func status(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv("NBDD_VERSITYGW", "/nonexistent/versitygw")
	_, err := Binary()
	require.ErrorContains(t, err, "NBDD_VERSITYGW")
}

func TestStartServesObjects(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	require.NotEqual(t, b, s.NewBucket(t), "NewBucket names must differ")
	put(t, c, b, "a/b", []byte("hello"))
	require.Equal(t, "hello", string(get(t, c, b, "a/b")))
	require.FileExists(t, s.Dir+"/"+b+"/a/b", "posix backend layout")

	put(t, c, b, "a/c", make([]byte, 1000))
	put(t, c, b, "ab", []byte("x"))
	n, size := s.Usage(t, b, "a/")
	require.Equal(t, 2, n, "objects under a/")
	require.Equal(t, int64(1005), size, "bytes under a/")
}

// TestEnvConfiguresSDK checks Env against what nbdd does with it: an SDK
// configuration loaded from the standard environment alone reaches the
// server, with path-style addressing. In virtual-hosted style the
// bucket's host name does not resolve, so a client that forgets
// path-style addressing fails here as it would against MinIO or Ceph.
func TestEnvConfiguresSDK(t *testing.T) {
	s := Start(t)
	b := s.NewBucket(t)
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	for _, k := range []string{"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		t.Setenv(k, "") // the SDK reads an empty variable as unset
	}
	cfg, err := config.LoadDefaultConfig(ctx(t))
	require.NoError(t, err)

	c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	out, err := c.ListBuckets(ctx(t), &s3.ListBucketsInput{})
	require.NoError(t, err)
	require.Len(t, out.Buckets, 1)
	require.Equal(t, b, *out.Buckets[0].Name)
	_, err = c.HeadBucket(ctx(t), &s3.HeadBucketInput{Bucket: &b})
	require.NoError(t, err, "path style")

	_, err = s3.NewFromConfig(cfg).HeadBucket(ctx(t), &s3.HeadBucketInput{Bucket: &b},
		func(o *s3.Options) { o.RetryMaxAttempts = 1 })
	require.ErrorContains(t, err, b+".localhost", "virtual-hosted style")
}

// TestKillRestart is what a fault test does: the server dies without
// warning, requests fail, and after Restart the same endpoint serves the
// same objects; the same after a graceful Stop.
func TestKillRestart(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	put(t, c, b, "k", []byte("before"))
	pid := s.PID()

	s.Kill()
	require.Zero(t, s.PID())
	_, err := c.HeadObject(ctx(t), &s3.HeadObjectInput{Bucket: &b, Key: aws.String("k")},
		func(o *s3.Options) { o.RetryMaxAttempts = 1 })
	require.Error(t, err, "HEAD with the server killed")
	require.Zero(t, status(err), "no HTTP answer from a killed server: %v", err)

	s.Restart()
	require.NotEqual(t, pid, s.PID())
	require.Equal(t, "before", string(get(t, c, b, "k")))

	put(t, c, b, "k", []byte("after"))
	s.Stop()
	require.Zero(t, s.PID())
	s.Restart()
	require.Equal(t, "after", string(get(t, c, b, "k")))
}

// TestPauseResume: a paused server accepts connections but answers
// nothing, so a client's deadline expires; after Resume it answers.
func TestPauseResume(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	s.Pause()
	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := c.HeadBucket(short, &s3.HeadBucketInput{Bucket: &b})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	s.Resume()
	_, err = c.HeadBucket(ctx(t), &s3.HeadBucketInput{Bucket: &b})
	require.NoError(t, err)
}

func TestStats(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	before, err := s.Stats()
	require.NoError(t, err)
	put(t, c, b, "x", make([]byte, 1000))
	put(t, c, b, "y", make([]byte, 24))
	get(t, c, b, "x")
	_, err = c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: &b, Key: aws.String("missing")})
	require.Equal(t, http.StatusNotFound, status(err))

	after, err := s.Stats()
	require.NoError(t, err)
	d := after.Sub(before)
	require.Equal(t, Stats{
		Requests:   4,
		Operations: map[string]int{"PutObject": 2, "GetObject": 2},
		Failed:     1,
		BytesIn:    1024,
	}, d)
}

func TestParseAccessLine(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		want       accessRecord
	}{
		{"put", `AK bkt1 [07/December/2026:01:19:01 +0000] 127.0.0.1 AK 2ZYRHZSJ52YG8L83 s3_PutObject k/1 /bkt1/k/1 200 - 0 1000 2 2 - Boto3/1.26.27 Python/3.11.2 - x SigV4 - AuthHeader s3.us-east-1.amazonaws.com - arn:aws:s3:::/bkt1/k/1 Yes`,
			accessRecord{"PutObject", 200, 1000}},
		{"key with spaces", `AK bkt1 [07/December/2026:01:19:01 +0000] 127.0.0.1 AK ID s3_GetObject a b /c /bkt1/a%20b%20/c 404 NoSuchKey 312 0 0 0 - Go - x SigV4 - AuthHeader h - arn Yes`,
			accessRecord{"GetObject", 404, 0}},
		{"bucket error", `- b1 [07/December/2026:01:18:57 +0000] 127.0.0.1 - W1YT125K7ULSTH7Z s3_CreateBucket - /b1 400 InvalidBucketName 0 0 0 0 - Boto3 - x SigV4 - AuthHeader h - arn Yes`,
			accessRecord{"CreateBucket", 400, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAccessLine(tc.line)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	_, err := parseAccessLine("garbage line")
	require.Error(t, err)
}
