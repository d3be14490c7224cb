// Package s3store keeps logdisk images in an S3 bucket: it implements
// logdisk.Store on aws-sdk-go-v2.
//
// aws-sdk-go-v2 rather than minio-go: it reads the standard AWS
// environment and shared config files (AWS_ENDPOINT_URL, AWS_PROFILE,
// AWS_REGION, credentials, SSO, instance roles) exactly as the AWS CLI and
// every other AWS tool do, so an S3 export is configured the way users
// already configure S3. Requests carry checksums only where an operation
// requires them (some S3-compatible servers reject the SDK's default
// CRC32), and a custom endpoint gets path-style addressing unless told
// otherwise. Ranged GETs, the read path's requests, are presigned by the
// SDK and sent on its HTTP client (get.go).
package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/nbdd/nbdd/backend/logdisk"
)

// Config configures a Store. Endpoint, region and credentials come from
// the standard AWS environment and config files.
type Config struct {
	Bucket string
	// Addressing is "auto" or "" (path-style when AWS_ENDPOINT_URL or a
	// profile's endpoint_url names a custom endpoint, virtual-hosted
	// otherwise), "path" or "virtual".
	Addressing string
	// SignPayload signs request bodies with SHA-256 instead of sending
	// UNSIGNED-PAYLOAD. Segments carry their own CRC-32C, and HTTPS
	// protects the body in transit; signing costs a SHA-256 pass over
	// every byte uploaded.
	SignPayload bool
	// Conns bounds the HTTP connections kept per host (64).
	Conns int
	// RequestTimeout bounds one request, retries included (60 s).
	RequestTimeout time.Duration
}

// Store is an S3 bucket as a logdisk.Store.
type Store struct {
	cfg      Config
	client   *s3.Client
	http     s3.HTTPClient // the client's own, for presigned GETs
	presign  *presigner
	endpoint string
	timeout  time.Duration
}

// New loads the AWS configuration and returns a Store for cfg.Bucket. It
// does not contact the server.
func New(ctx context.Context, cfg Config) (*Store, error) {
	conns := cfg.Conns
	if conns == 0 {
		conns = 64
	}
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = conns * 2
		t.MaxIdleConnsPerHost = conns
	})
	awsCfg, err := config.LoadDefaultConfig(ctx,
		config.WithHTTPClient(httpClient),
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	)
	if err != nil {
		return nil, fmt.Errorf("AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	endpoint := aws.ToString(awsCfg.BaseEndpoint)
	pathStyle, err := pathStyleFor(cfg.Addressing, endpoint)
	if err != nil {
		return nil, err
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = pathStyle
		if !cfg.SignPayload {
			o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
		}
	})
	timeout := cfg.RequestTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	if endpoint == "" {
		endpoint = "AWS S3 (" + awsCfg.Region + ")"
	}
	// The client's HTTP client, not httpClient: the SDK derives its own
	// from it, with a transport of its own, so sending presigned GETs on
	// httpClient would keep a second pool of connections, and the first
	// GET would dial although the open's requests left connections idle.
	return &Store{
		cfg: cfg, client: client, http: client.Options().HTTPClient, presign: newPresigner(client, cfg.Bucket),
		endpoint: endpoint, timeout: timeout,
	}, nil
}

func pathStyleFor(addressing, endpoint string) (bool, error) {
	switch addressing {
	case "", "auto":
		return endpoint != "", nil
	case "path":
		return true, nil
	case "virtual":
		return false, nil
	}
	return false, fmt.Errorf("addressing %q: want auto, path or virtual", addressing)
}

// Endpoint describes where the store's requests go.
func (s *Store) Endpoint() string { return s.endpoint }

// PutIfAbsent implements logdisk.Store with If-None-Match: *.
func (s *Store) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        &s.cfg.Bucket,
		Key:           &key,
		Body:          body,
		ContentLength: &size,
		IfNoneMatch:   aws.String("*"),
	})
	return s.classify("put", key, err)
}

// ReadAt implements logdisk.Store with a ranged GET.
func (s *Store) ReadAt(ctx context.Context, key string, p []byte, off int64) (int, error) {
	return s.ReadAtv(ctx, key, [][]byte{p}, off)
}

// ReadAtv implements logdisk.VectorReader: one ranged GET (presigned,
// get.go), its body read into bufs in turn.
func (s *Store) ReadAtv(ctx context.Context, key string, bufs [][]byte, off int64) (int, error) {
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if total == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.rangedGet(ctx, key, off, int64(total))
	if err != nil {
		if httpStatus(err) == http.StatusRequestedRangeNotSatisfiable {
			return 0, io.EOF
		}
		return 0, s.classify("get", key, err)
	}
	defer resp.Body.Close()
	return readBody(resp, key, bufs)
}

// ReadWholev implements logdisk.WholeReader: one GET without a Range
// (presigned, get.go). An object whose length is not the buffers' total
// is an error that retrying cannot cure.
func (s *Store) ReadWholev(ctx context.Context, key string, bufs [][]byte) (int, error) {
	total := int64(0)
	for _, b := range bufs {
		total += int64(len(b))
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.wholeGet(ctx, key)
	if err != nil {
		return 0, s.classify("get", key, err)
	}
	defer resp.Body.Close()
	if resp.ContentLength >= 0 && resp.ContentLength != total {
		return 0, &logdisk.Permanent{Err: fmt.Errorf("get %s: the object is %d bytes, want %d", key, resp.ContentLength, total)}
	}
	return readBody(resp, key, bufs)
}

// readBody reads resp's body into bufs in turn: io.EOF where it ends,
// as its Content-Length says, before they are full.
func readBody(resp *http.Response, key string, bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		m, err := io.ReadFull(resp.Body, b)
		n += m
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			if int64(n) == resp.ContentLength {
				return n, io.EOF
			}
		}
		if err != nil {
			return n, fmt.Errorf("get %s: %w", key, err)
		}
	}
	return n, nil
}

// Delete implements logdisk.Store with DeleteObjects, 1000 keys a request.
func (s *Store) Delete(ctx context.Context, keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		ids := make([]types.ObjectIdentifier, n)
		for i, k := range keys[:n] {
			ids[i] = types.ObjectIdentifier{Key: aws.String(k)}
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		out, err := s.client.DeleteObjects(rctx, &s3.DeleteObjectsInput{
			Bucket: &s.cfg.Bucket,
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		cancel()
		if err != nil {
			return s.classify("delete", keys[0], err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) != "NoSuchKey" {
				return fmt.Errorf("delete %s: %s: %s", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
			}
		}
		keys = keys[n:]
	}
	return nil
}

// List implements logdisk.Store with ListObjectsV2.
func (s *Store) List(ctx context.Context, prefix, startAfter string, fn func(logdisk.ObjectInfo) bool) error {
	in := &s3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: &prefix}
	if startAfter != "" {
		in.StartAfter = &startAfter
	}
	p := s3.NewListObjectsV2Paginator(s.client, in)
	for p.HasMorePages() {
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		page, err := p.NextPage(rctx)
		cancel()
		if err != nil {
			return s.classify("list", prefix, err)
		}
		for _, o := range page.Contents {
			if !fn(logdisk.ObjectInfo{Key: aws.ToString(o.Key), Size: aws.ToInt64(o.Size)}) {
				return nil
			}
		}
	}
	return nil
}

// classify maps S3 errors to logdisk's: 412 is ErrExists, a missing key
// ErrNotFound, and what no retry cures (credentials, a missing bucket,
// access denied) is logdisk.Permanent with a message that says so.
func (s *Store) classify(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var ae smithy.APIError
	status := httpStatus(err)
	code := ""
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	switch {
	case status == http.StatusPreconditionFailed || code == "PreconditionFailed":
		return fmt.Errorf("%s %s: %w", op, key, logdisk.ErrExists)
	case code == "NoSuchKey" || status == http.StatusNotFound && code != "NoSuchBucket":
		return fmt.Errorf("%s %s: %w", op, key, logdisk.ErrNotFound)
	case code == "NoSuchBucket":
		return &logdisk.Permanent{Err: fmt.Errorf("bucket %q does not exist at %s", s.cfg.Bucket, s.endpoint)}
	case code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "InvalidClientTokenId":
		return &logdisk.Permanent{Err: fmt.Errorf("the S3 server at %s refused the credentials (%s): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE", s.endpoint, code)}
	case code == "AccessDenied" || status == http.StatusForbidden:
		return &logdisk.Permanent{Err: fmt.Errorf("access denied to s3://%s/%s at %s", s.cfg.Bucket, key, s.endpoint)}
	case isUnreachable(err):
		return fmt.Errorf("cannot reach the S3 endpoint %s: %w", s.endpoint, unwrapNet(err))
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

func isUnreachable(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.As(err, &ne) || errors.Is(err, os.ErrDeadlineExceeded)
}

// unwrapNet shortens an SDK transport error to its network cause.
func unwrapNet(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe
	}
	if i := strings.LastIndex(err.Error(), ": "); i >= 0 && errors.Is(err, syscall.ECONNREFUSED) {
		return errors.New(err.Error()[i+2:])
	}
	return err
}
