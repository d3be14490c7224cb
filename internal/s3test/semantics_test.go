package s3test

import (
	"bytes"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/require"
)

// The tests in this file pin down what the S3 server in the tests does
// with the calls a log-structured block store makes: put-if-absent for
// every object that must never be overwritten, range GETs of segments,
// listing after a known key, and batch deletes. If a new versitygw
// release changes any of it, these fail before the engine's tests do.

// putIfAbsent PUTs body at key with If-None-Match: * and no retries, so a
// 409 from the server is seen as it is.
func putIfAbsent(t *testing.T, c *s3.Client, bucket, key string, body []byte) error {
	_, err := c.PutObject(ctx(t), &s3.PutObjectInput{
		Bucket: &bucket, Key: &key, Body: bytes.NewReader(body), IfNoneMatch: aws.String("*"),
	}, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
	return err
}

// putIfAbsentRetrying is putIfAbsent retried, as the SDK's retryer would,
// while the attempt ends without an HTTP answer. It returns the last
// error and how many attempts ended that way.
func putIfAbsentRetrying(t *testing.T, c *s3.Client, bucket, key string, body []byte) (err error, unanswered int) {
	for range 10 {
		if err = putIfAbsent(t, c, bucket, key, body); err == nil || status(err) != 0 {
			return err, unanswered
		}
		unanswered++
	}
	return err, unanswered
}

// TestPutIfAbsent: a second If-None-Match: * PUT of a key fails with 412
// and leaves the first object as it was.
func TestPutIfAbsent(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	require.NoError(t, putIfAbsent(t, c, b, "seg/1", []byte("first")))
	err := putIfAbsent(t, c, b, "seg/1", []byte("second"))
	require.Error(t, err, "second put-if-absent of the same key")
	require.Equal(t, http.StatusPreconditionFailed, status(err), "%v", err)
	require.Equal(t, "first", string(get(t, c, b, "seg/1")))

	// A plain PUT still overwrites: the condition is per request.
	put(t, c, b, "seg/1", []byte("third"))
	require.Equal(t, "third", string(get(t, c, b, "seg/1")))
}

// TestPutIfAbsentLargeBody: versitygw checks the condition before it has
// read the body, answers 412 and closes the connection. With a body of
// several MiB the client is often still sending then, and sees the
// connection reset instead of the 412 (about one attempt in three with
// 8 MiB here). A retry gets the 412. So a segment PUT that loses its
// put-if-absent may first fail without an HTTP status, and the engine's
// retry of an unanswered PUT decides; and since the same retry after a
// lost 200 would also get 412, a writer that sees 412 on a retried PUT
// must read the object back before it concludes another writer won.
func TestPutIfAbsentLargeBody(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	first := bytes.Repeat([]byte{1}, 8<<20)
	require.NoError(t, putIfAbsent(t, c, b, "seg/big", first))
	second := bytes.Repeat([]byte{2}, 8<<20)
	resets := 0
	for range 6 {
		err, n := putIfAbsentRetrying(t, c, b, "seg/big", second)
		resets += n
		require.Equal(t, http.StatusPreconditionFailed, status(err), "after %d unanswered attempts: %v", n, err)
	}
	t.Logf("%d of the losing 8 MiB attempts ended in a reset, not a 412", resets)
	require.True(t, bytes.Equal(first, get(t, c, b, "seg/big")), "a losing PUT changed the object")
}

// TestPutIfAbsentConcurrent: writers racing for one key with
// If-None-Match: * (as two nbdd instances claiming the same writer epoch)
// leave exactly one writer's bytes in the object, whole; that writer is
// the only one told it succeeded, and every other gets 412, or 409
// ConditionalRequestConflict, which AWS documents for a conflicting
// request in flight. Attempts that end without an answer are retried (see
// TestPutIfAbsentLargeBody); a writer still unanswered after that is
// counted, not judged, as long as its bytes are not the object's.
func TestPutIfAbsentConcurrent(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	const writers, rounds = 8, 10
	outcomes := map[int]int{} // HTTP status (0: no answer) -> count
	for round := range rounds {
		key := fmt.Sprintf("epoch/%d", round)
		bodies := make([][]byte, writers)
		errs := make([]error, writers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for w := range writers {
			bodies[w] = bytes.Repeat([]byte{byte('a' + w)}, 256<<10)
			wg.Go(func() {
				<-start
				errs[w], _ = putIfAbsentRetrying(t, c, b, key, bodies[w])
			})
		}
		close(start)
		wg.Wait()

		got := get(t, c, b, key)
		winner := bytes.IndexByte([]byte("abcdefgh"), got[0])
		require.NotEqual(t, -1, winner, "round %d: object holds no writer's bytes", round)
		require.True(t, bytes.Equal(bodies[winner], got), "round %d: object is not writer %d's body, whole", round, winner)
		for w, err := range errs {
			if err == nil {
				require.Equal(t, winner, w, "round %d: writer %d was told it won; the object is writer %d's", round, w, winner)
				outcomes[http.StatusOK]++
				continue
			}
			st := status(err)
			require.Contains(t, []int{0, http.StatusPreconditionFailed, http.StatusConflict}, st,
				"round %d writer %d: got %v; want 412 or 409", round, w, err)
			outcomes[st]++
		}
	}
	t.Logf("outcomes by HTTP status (0: no answer after retries): %v", outcomes)
	require.Equal(t, rounds, outcomes[http.StatusOK], "rounds whose winner was told so")
}

// TestIfMatch: If-Match compares ETags on a key that exists. On a key
// that does not exist, versitygw v1.8.0 answers 404 (as AWS documents),
// but MinIO and earlier versitygw releases ignored the header there and
// wrote the object. The engine must not depend on If-Match against a key
// that may be missing; it creates keys with If-None-Match: * only.
func TestIfMatch(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	out, err := c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: &b, Key: aws.String("meta"), Body: bytes.NewReader([]byte("v1"))})
	require.NoError(t, err)
	etag := *out.ETag
	ifMatch := func(key, etag, body string) error {
		_, err := c.PutObject(ctx(t), &s3.PutObjectInput{
			Bucket: &b, Key: &key, Body: bytes.NewReader([]byte(body)), IfMatch: &etag,
		}, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
		return err
	}

	err = ifMatch("meta", `"0123456789abcdef0123456789abcdef"`, "stale")
	require.Equal(t, http.StatusPreconditionFailed, status(err), "If-Match with another ETag: %v", err)
	require.NoError(t, ifMatch("meta", etag, "v2"), "If-Match with the current ETag")
	require.Equal(t, "v2", string(get(t, c, b, "meta")))

	err = ifMatch("missing", etag, "x")
	require.Equal(t, http.StatusNotFound, status(err), "If-Match on a missing key: %v", err)
	_, err = c.HeadObject(ctx(t), &s3.HeadObjectInput{Bucket: &b, Key: aws.String("missing")})
	require.Equal(t, http.StatusNotFound, status(err), "the missing key was written: %v", err)
}

// TestRangeGet: a segment's header and extents are read with range GETs.
// A range within the object returns exactly those bytes; one that runs
// past the end is cut at the end; one that starts past the end is 416.
func TestRangeGet(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	obj := make([]byte, 1<<20)
	for i := range obj {
		obj[i] = byte(i * 7)
	}
	put(t, c, b, "seg", obj)
	rangeGet := func(r string) ([]byte, *string, error) {
		out, err := c.GetObject(ctx(t), &s3.GetObjectInput{Bucket: &b, Key: aws.String("seg"), Range: &r})
		if err != nil {
			return nil, nil, err
		}
		defer out.Body.Close()
		var buf bytes.Buffer
		_, err = buf.ReadFrom(out.Body)
		return buf.Bytes(), out.ContentRange, err
	}
	for _, tc := range []struct {
		rng        string
		start, end int // want obj[start:end]
		contRange  string
	}{
		{"bytes=0-4095", 0, 4096, "bytes 0-4095/1048576"},
		{"bytes=123457-654320", 123457, 654321, "bytes 123457-654320/1048576"},
		{"bytes=1048000-2000000", 1048000, 1 << 20, "bytes 1048000-1048575/1048576"},
		{"bytes=-100", 1<<20 - 100, 1 << 20, "bytes 1048476-1048575/1048576"},
	} {
		got, cr, err := rangeGet(tc.rng)
		require.NoError(t, err, tc.rng)
		require.True(t, bytes.Equal(obj[tc.start:tc.end], got), "%s: wrong bytes (len %d)", tc.rng, len(got))
		require.Equal(t, tc.contRange, aws.ToString(cr), tc.rng)
	}
	_, _, err := rangeGet("bytes=1048576-1048580")
	require.Equal(t, http.StatusRequestedRangeNotSatisfiable, status(err), "range past the end: %v", err)
}

// TestListStartAfter: opening an export lists the segments after the last
// checkpoint with StartAfter, in pages. Keys come back in byte order,
// strictly after StartAfter, within the prefix, and the pages join up.
func TestListStartAfter(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	var keys []string
	for i := range 25 {
		keys = append(keys, fmt.Sprintf("img/seg/%016x", i*3))
	}
	for _, k := range append(keys, "img/meta", "other/seg/0000000000000001") {
		put(t, c, b, k, []byte(k))
	}

	list := func(startAfter string, maxKeys int32) []string {
		var got []string
		p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{
			Bucket: &b, Prefix: aws.String("img/seg/"), StartAfter: &startAfter, MaxKeys: &maxKeys,
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx(t))
			require.NoError(t, err)
			require.LessOrEqual(t, len(page.Contents), int(maxKeys))
			for _, o := range page.Contents {
				got = append(got, *o.Key)
			}
		}
		return got
	}
	require.Equal(t, keys, list("", 1000))
	require.Equal(t, keys[10:], list(keys[9], 4), "StartAfter an existing key, pages of 4")
	require.Equal(t, keys[10:], list(fmt.Sprintf("img/seg/%016x", 9*3+1), 7), "StartAfter a key between two")
	require.Empty(t, list(keys[len(keys)-1], 5), "StartAfter the last key")
	require.True(t, sort.StringsAreSorted(list("", 3)))
}

// TestDeleteObjects: the garbage collector deletes dead segments in
// batches. Every key in the batch, present or not, is reported deleted
// (S3 treats deleting a missing key as success), and they are gone.
func TestDeleteObjects(t *testing.T) {
	s := Start(t)
	c := s.Client()
	b := s.NewBucket(t)
	var ids []types.ObjectIdentifier
	for i := range 10 {
		k := fmt.Sprintf("seg/%d", i)
		if i%3 != 0 {
			put(t, c, b, k, []byte(k))
		}
		ids = append(ids, types.ObjectIdentifier{Key: aws.String(k)})
	}
	put(t, c, b, "keep", []byte("keep"))
	out, err := c.DeleteObjects(ctx(t), &s3.DeleteObjectsInput{
		Bucket: &b, Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(false)},
	})
	require.NoError(t, err)
	require.Empty(t, out.Errors)
	var deleted []string
	for _, d := range out.Deleted {
		deleted = append(deleted, *d.Key)
	}
	sort.Strings(deleted)
	require.Len(t, deleted, len(ids))

	l, err := c.ListObjectsV2(ctx(t), &s3.ListObjectsV2Input{Bucket: &b})
	require.NoError(t, err)
	require.Len(t, l.Contents, 1)
	require.Equal(t, "keep", *l.Contents[0].Key)
}
