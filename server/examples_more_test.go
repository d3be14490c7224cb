package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nbdd/nbdd/kernel/nbdkernel"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
)

// greeting is a read-only backend whose every byte is computed, not
// stored: a go-nbd backend's four methods, plus backend.ReadOnlyer so
// that clients are told (NBD_FLAG_READ_ONLY) rather than refused
// writes one by one.
type greeting struct{ size int64 }

func (g greeting) ReadAt(p []byte, off int64) (int, error) {
	const text = "hello from a custom backend\n"
	for i := range p {
		p[i] = text[(off+int64(i))%int64(len(text))]
	}
	return len(p), nil
}

func (g greeting) WriteAt(p []byte, off int64) (int, error) { return 0, os.ErrPermission }
func (g greeting) Size() (int64, error)                     { return g.size, nil }
func (g greeting) Sync() error                              { return nil }
func (g greeting) ReadOnly() bool                           { return true }

// Serve a backend of your own. Backends written for go-nbd plug in as
// they are; set Export.SerialBackend if yours is not safe for concurrent
// calls (go-nbd called a backend one request at a time), and
// Export.MultiConn where go-nbd's SupportsMultiConn was set.
func Example_customBackend() {
	dir, _ := os.MkdirTemp("", "nbdd-example")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nbd.sock")
	srv := &server.Server{Exports: []server.Export{{Name: "hello", Backend: greeting{size: 1 << 20}}}}
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())

	// nbdinfo "nbd+unix:///hello?socket=$sock" or nbd-client would do;
	// here a minimal client reads the first bytes.
	c, err := net.Dial("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	exp, err := nbdkernel.Handshake(c, "hello")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("size", exp.Size, "read-only", exp.Flags&protocol.FlagReadOnly != 0)
	fmt.Printf("%q\n", readAt(c, 0, 28))
	// Output:
	// size 1048576 read-only true
	// "hello from a custom backend\n"
}

// Serve one connection handed over by other code, here one end of a pipe:
// a socket from a parent process, a vsock, a connection a proxy accepted.
// ServeConn returns when the client disconnects.
func ExampleServer_ServeConn() {
	srv := &server.Server{Exports: []server.Export{{Name: "disk", Backend: greeting{size: 4096}}}}
	client, conn := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(context.Background(), conn) }()

	exp, err := nbdkernel.Handshake(client, "disk")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("size", exp.Size)
	var disc [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdDisc}.Put(&disc)
	client.Write(disc[:])
	io.Copy(io.Discard, client) // the server closes after NBD_CMD_DISC
	fmt.Println("ServeConn:", <-done)
	// Output:
	// size 4096
	// ServeConn: <nil>
}

// Serve every regular file of a directory as an export named after it,
// looked up when a client asks, so files added later are served too.
func ExampleNewDirSource() {
	dir, _ := os.MkdirTemp("", "nbdd-images")
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "small.img"), make([]byte, 64<<10), 0o644)
	src, err := server.NewDirSource(dir, true) // read-only
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	srv := &server.Server{Source: src}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())

	os.WriteFile(filepath.Join(dir, "later.img"), make([]byte, 1<<20), 0o644)
	for _, name := range []string{"small.img", "later.img", "missing.img"} {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		exp, err := nbdkernel.Handshake(c, name)
		c.Close()
		if err != nil {
			fmt.Println(name, "refused")
			continue
		}
		fmt.Println(name, exp.Size)
	}
	// Output:
	// small.img 65536
	// later.img 1048576
	// missing.img refused
}

// Require TLS (proto.md "TLS support"), with client certificates checked
// against a CA and matched by name. TLS clients connect with, for example,
//
//	nbdinfo 'nbds://host/disk?tls-certificates=DIR'
//
// where DIR holds ca-cert.pem, client-cert.pem and client-key.pem; a
// plaintext client, such as the kernel's handshake here, is refused.
func Example_tls() {
	cert, pool := selfSigned("localhost")
	srv := &server.Server{
		Exports: []server.Export{{Name: "disk", Backend: greeting{size: 1 << 20}}},
		TLSMode: server.TLSRequire,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		},
		Access: server.Access{CertNames: []string{"backup-*"}}, // client certificate names
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_, err = nbdkernel.Handshake(c, "disk")
	fmt.Println(err)
	// Output: nbd: server refused the export "disk": NBD_REP_ERR_TLS_REQD: TLS is required
}

// selfSigned makes a certificate for name and a pool that trusts it.
func selfSigned(name string) (tls.Certificate, *x509.CertPool) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	parsed, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: parsed}, pool
}

// readAt sends NBD_CMD_READ on a connection without structured replies
// (as nbdkernel.Handshake leaves it) and returns the data.
func readAt(c net.Conn, off uint64, n uint32) []byte {
	var req [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdRead, Cookie: 1, Offset: off, Length: n}.Put(&req)
	if _, err := c.Write(req[:]); err != nil {
		log.Fatal(err)
	}
	reply := make([]byte, protocol.SimpleReplySize+int(n))
	if _, err := io.ReadFull(c, reply); err != nil {
		log.Fatal(err)
	}
	if errno := binary.BigEndian.Uint32(reply[4:]); errno != 0 {
		log.Fatalf("READ: error %d", errno)
	}
	return reply[protocol.SimpleReplySize:]
}
