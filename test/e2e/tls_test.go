package e2e

// TLS: nbdinfo, nbdcopy and qemu-img over nbds:// with an X.509
// CA, server and client certificates that the test generates; plaintext
// refused in require mode; SELECTIVETLS hiding tls-only exports; the cost
// of TLS in throughput. Helpers of this file carry the prefix p5.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// p5ca is a certificate authority made by the test.
type p5ca struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

// p5newCA makes a self-signed CA named cn.
//
// Every key is ECDSA P-256. RSA client keys do not work with the libnbd and
// qemu of Debian 12 against nbdd: Go's TLS 1.3 CertificateRequest lists
// only the signature schemes TLS 1.3 allows in CertificateVerify
// (rsa_pss_rsae_*, ecdsa_*, ed25519; PKCS#1 v1.5 only in
// signature_algorithms_cert), and gnutls 3.7.9 derives the acceptable key
// types from the pk of each scheme, so RSA-PSS-RSAE-SHA256 yields RSA-PSS
// and an RSA (rsaEncryption) certificate never matches
// (lib/tls13/certificate_request.c; find_x509_client_cert in
// lib/auth/cert.c). gnutls then sends no certificate and nbdd says "tls:
// client didn't provide a certificate", whatever the certificate version or
// key usage. gnutls 3.8.13 fixed it (commit 57830464c, "Fix TLS 1.3
// handshake"). The openssl-made certificates of the first manual try were
// RSA; ECDSA ones, from openssl or from Go, work.
func p5newCA(t *testing.T, cn string) *p5ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"nbdd e2e"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &p5ca{cert: cert, der: der, key: key}
}

// issue makes a v3 leaf certificate for cn with the extended key usage
// eku (server certificates get SANs 127.0.0.1 and localhost) and writes it
// and its PKCS#8 key as dir/prefix-cert.pem and dir/prefix-key.pem.
func (ca *p5ca) issue(t *testing.T, dir, prefix, cn string, eku x509.ExtKeyUsage) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"nbdd e2e"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{eku},
	}
	if eku == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p5writePEM(t, filepath.Join(dir, prefix+"-cert.pem"), "CERTIFICATE", der)
	p5writePEM(t, filepath.Join(dir, prefix+"-key.pem"), "PRIVATE KEY", pkcs8)
}

func p5writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// p5pki is a directory laid out for libnbd's tls-certificates=DIR and
// qemu's tls-creds-x509 dir=DIR: ca-cert.pem, client-cert.pem and
// client-key.pem, plus server-cert.pem and server-key.pem for nbdd.
type p5pki struct {
	dir string
	ca  *p5ca
}

func p5newPKI(t *testing.T) *p5pki {
	t.Helper()
	p := &p5pki{dir: t.TempDir(), ca: p5newCA(t, "nbdd e2e CA")}
	p5writePEM(t, p.file("ca-cert.pem"), "CERTIFICATE", p.ca.der)
	p.ca.issue(t, p.dir, "server", "localhost", x509.ExtKeyUsageServerAuth)
	p.ca.issue(t, p.dir, "client", "nbdd e2e client", x509.ExtKeyUsageClientAuth)
	return p
}

func (p *p5pki) file(name string) string { return filepath.Join(p.dir, name) }

// serverArgs are nbdd's TLS flags for mode, with client certificates
// verified against the CA when verify is set.
func (p *p5pki) serverArgs(mode string, verify bool) []string {
	args := []string{"--tls", mode, "--tls-cert", p.file("server-cert.pem"), "--tls-key", p.file("server-key.pem")}
	if verify {
		args = append(args, "--tls-ca", p.file("ca-cert.pem"))
	}
	return args
}

// plainURI is the plaintext form of an announced URI, for a client that
// tries without TLS.
func plainURI(uri string) string {
	uri = strings.Replace(uri, "nbds+unix://", "nbd+unix://", 1)
	return strings.Replace(uri, "nbds://", "nbd://", 1)
}

// p5tlsURI turns an announced nbd:// or nbd+unix:// URI into its nbds
// form with tls-certificates=dir.
func p5tlsURI(uri, dir string) string {
	uri = strings.Replace(uri, "nbd+unix://", "nbds+unix://", 1)
	uri = strings.Replace(uri, "nbd://", "nbds://", 1)
	sep := "?"
	if strings.Contains(uri, "?") {
		sep = "&"
	}
	return uri + sep + "tls-certificates=" + dir
}

// p5listNames runs nbdinfo --list --json and returns the export names.
func p5listNames(t *testing.T, uri string) []string {
	t.Helper()
	var names []string
	for _, e := range nbdinfo(t, "--list", uri).Exports {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	return names
}

// p5refused runs c, which must fail, and returns its output.
func p5refused(t *testing.T, c command) string {
	t.Helper()
	out, err := c.try(t)
	if err == nil {
		t.Errorf("%s succeeded; want it refused:\n%s", c, out)
	}
	return out
}

// TestTLSRequire serves a file export with --tls require and client
// certificates verified against the test's CA: nbdinfo (unix and TCP) and
// qemu-img connect over TLS and read the right bytes; plaintext clients,
// a client without a certificate, a TLS-PSK client and one whose
// certificate another CA signed are refused.
func TestTLSRequire(t *testing.T) {
	requireTool(t, "nbdinfo")
	requireTool(t, "qemu-img")
	pki := p5newPKI(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := writeRandomFile(img, 8<<20, 55); err != nil {
		t.Fatal(err)
	}
	s := startNBDD(t, append([]string{"--listen", "tcp://127.0.0.1:0", "--export", "disk=" + img}, pki.serverArgs("require", true)...)...)
	for _, u := range []string{s.unixURI(t, "disk"), s.tcpURI(t, "disk")} {
		if !strings.HasPrefix(u, "nbds") {
			t.Errorf("announced %s under --tls require; want an nbds URI (doc/uri.md)", u)
		}
	}
	unixTLS := p5tlsURI(s.unixURI(t, "disk"), pki.dir)
	tcpTLS := p5tlsURI(s.tcpURI(t, "disk"), pki.dir)

	t.Run("nbdinfo", func(t *testing.T) {
		for _, uri := range []string{unixTLS, tcpTLS} {
			info := nbdinfo(t, uri)
			if !info.TLS || len(info.Exports) != 1 || info.Exports[0].Size != 8<<20 {
				t.Errorf("nbdinfo --json %s: TLS %v, exports %+v; want TLS and one 8 MiB export", uri, info.TLS, info.Exports)
			}
			if names := p5listNames(t, uri); !slices.Equal(names, []string{"disk"}) {
				t.Errorf("nbdinfo --list over TLS: %v; want [disk]", names)
			}
		}
	})

	t.Run("qemu-img", func(t *testing.T) {
		host, port, err := net.SplitHostPort(strings.Split(s.tcpURI(t, "disk"), "/")[2])
		if err != nil {
			t.Fatal(err)
		}
		object := "tls-creds-x509,id=tls0,endpoint=client,dir=" + pki.dir
		opts := "driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port + ",export=disk,tls-creds=tls0" // certificate checked against 127.0.0.1
		out := command{name: "qemu-img", args: []string{"info", "--object", object, "--image-opts", opts}}.run(t)
		if !strings.Contains(out, "virtual size: 8 MiB") {
			t.Errorf("qemu-img info over TLS:\n%s\nwant virtual size: 8 MiB", out)
		}
		back := filepath.Join(t.TempDir(), "back.img")
		command{name: "qemu-img", args: []string{"convert", "--object", object, "--image-opts", opts, "-O", "raw", back}}.run(t)
		requireSameFiles(t, img, back)
		// The unix socket too; it has no host name, so name the one to check.
		uopts := "driver=nbd,server.type=unix,server.path=" + s.sock + ",export=disk,tls-creds=tls0,tls-hostname=localhost"
		command{name: "qemu-img", args: []string{"info", "--object", object, "--image-opts", uopts}}.run(t)
		// and the name is checked: one the certificate does not carry fails.
		bad := strings.Replace(uopts, "tls-hostname=localhost", "tls-hostname=elsewhere.example", 1)
		out = p5refused(t, command{name: "qemu-img", args: []string{"info", "--object", object, "--image-opts", bad}})
		t.Logf("qemu-img with tls-hostname=elsewhere.example: %s", strings.TrimSpace(out))
	})

	t.Run("plaintext-refused", func(t *testing.T) {
		for _, c := range []command{
			{name: "nbdinfo", args: []string{plainURI(s.unixURI(t, "disk"))}},
			{name: "nbdinfo", args: []string{plainURI(s.tcpURI(t, "disk"))}},
			{name: "nbdinfo", args: []string{"--list", plainURI(s.unixURI(t, "disk"))}},
		} {
			out := p5refused(t, c)
			if strings.Contains(out, "export-size") {
				t.Errorf("%s showed the export to a plaintext client:\n%s", c, out)
			}
			t.Logf("%s: %s", c, strings.TrimSpace(out))
		}
		out := p5refused(t, command{name: "qemu-img", args: []string{"info", "-f", "raw", plainURI(s.tcpURI(t, "disk"))}})
		if !strings.Contains(out, "TLS") {
			t.Errorf("qemu-img without TLS: %q; want a message about TLS", out)
		}
		t.Logf("qemu-img info without TLS: %s", strings.TrimSpace(out))
		// The raw client's NBD_OPT_GO must get NBD_REP_ERR_TLS_REQD.
		if _, err := openRaw(s.sock, "disk"); err == nil || !strings.Contains(err.Error(), "NBD_REP_ERR_TLS_REQD") {
			t.Errorf("plaintext NBD_OPT_GO: %v; want NBD_REP_ERR_TLS_REQD", err)
		}
	})

	t.Run("no-client-certificate", func(t *testing.T) {
		dir := t.TempDir()
		p5writePEM(t, filepath.Join(dir, "ca-cert.pem"), "CERTIFICATE", pki.ca.der)
		out := p5refused(t, command{name: "nbdinfo", args: []string{p5tlsURI(s.unixURI(t, "disk"), dir)}})
		t.Logf("without a client certificate: %s", strings.TrimSpace(out))
		if !s.stderr.waitFor("the client sent no TLS certificate", 5*time.Second) {
			t.Errorf("nbdd did not log the missing client certificate:\n%s", s.stderr)
		}
	})

	t.Run("psk-client-refused", func(t *testing.T) {
		// crypto/tls has no external PSK: a PSK-only client (libnbd's
		// tls-psk-file) gets a handshake failure, and nbdd says why.
		psk := filepath.Join(t.TempDir(), "keys.psk")
		if err := os.WriteFile(psk, []byte("alice:"+strings.Repeat("0123456789abcdef", 4)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		uri := strings.Replace(plainURI(s.unixURI(t, "disk")), "nbd+unix:///", "nbds+unix://alice@/", 1) + "&tls-psk-file=" + psk
		out := p5refused(t, command{name: "nbdinfo", args: []string{uri}})
		t.Logf("TLS-PSK client: %s", strings.TrimSpace(out))
		if !s.stderr.waitFor("TLS-PSK is not supported", 5*time.Second) {
			t.Errorf("nbdd did not log that TLS-PSK is not supported:\n%s", s.stderr)
		}
	})

	t.Run("client-certificate-of-another-CA", func(t *testing.T) {
		// Same CA name, other key: gnutls offers the certificate (the
		// issuer name matches what nbdd asks for) and nbdd must reject
		// its signature.
		dir := t.TempDir()
		p5writePEM(t, filepath.Join(dir, "ca-cert.pem"), "CERTIFICATE", pki.ca.der)
		p5newCA(t, "nbdd e2e CA").issue(t, dir, "client", "intruder", x509.ExtKeyUsageClientAuth)
		out := p5refused(t, command{name: "nbdinfo", args: []string{p5tlsURI(s.unixURI(t, "disk"), dir)}})
		t.Logf("with a client certificate of another CA: %s", strings.TrimSpace(out))
		if !s.stderr.waitFor("unknown authority", 5*time.Second) {
			t.Errorf("nbdd did not log a client certificate of an unknown authority:\n%s", s.stderr)
		}
	})
}

// TestTLSSelective: with --tls on, an export marked tls-only is absent
// from a plaintext nbdinfo --list and refused to a plaintext client, and
// listed and served over TLS; the other export is served either way.
func TestTLSSelective(t *testing.T) {
	requireTool(t, "nbdinfo")
	pki := p5newPKI(t)
	s := startNBDD(t, append([]string{"--memory", "pub=1M", "--memory", "secret=2M,tls-only,description=tls only"},
		pki.serverArgs("on", false)...)...)
	plain := s.unixURI(t, "pub")
	if names := p5listNames(t, plain); !slices.Equal(names, []string{"pub"}) {
		t.Errorf("plaintext nbdinfo --list: %v; want [pub] (secret is tls-only)", names)
	}
	if names := p5listNames(t, p5tlsURI(plain, pki.dir)); !slices.Equal(names, []string{"pub", "secret"}) {
		t.Errorf("nbdinfo --list over TLS: %v; want [pub secret]", names)
	}
	if info := nbdinfo(t, plain); info.TLS || len(info.Exports) != 1 || info.Exports[0].Size != 1<<20 {
		t.Errorf("plaintext nbdinfo pub: TLS %v, %+v; want a plaintext 1 MiB export", info.TLS, info.Exports)
	}
	secret := s.unixURI(t, "secret")
	if !strings.HasPrefix(secret, "nbds+unix://") || !strings.HasPrefix(plain, "nbd+unix://") {
		t.Errorf("announced %s and %s; want nbds for the tls-only export only", plain, secret)
	}
	out := p5refused(t, command{name: "nbdinfo", args: []string{plainURI(secret)}})
	if strings.Contains(out, "export-size") {
		t.Errorf("plaintext nbdinfo secret showed the export:\n%s", out)
	}
	t.Logf("plaintext nbdinfo secret: %s", strings.TrimSpace(out))
	info := nbdinfo(t, p5tlsURI(s.unixURI(t, "secret"), pki.dir))
	if !info.TLS || len(info.Exports) != 1 || info.Exports[0].Size != 2<<20 || info.Exports[0].Description != "tls only" {
		t.Errorf("nbdinfo secret over TLS: TLS %v, %+v; want TLS, 2 MiB, description \"tls only\"", info.TLS, info.Exports)
	}
}

// TestTLSThroughput copies the 256 MiB random image into a memory export
// and out to null: with nbdcopy, in plaintext and over TLS (--tls on, on
// the unix socket), logs the MB/s of each, and checks the bytes that
// arrived over TLS.
func TestTLSThroughput(t *testing.T) {
	requireTool(t, "nbdcopy")
	pki := p5newPKI(t)
	src := randomImage(t)
	s := startNBDD(t, append([]string{"--memory", "plain=256M", "--memory", "tls=256M"}, pki.serverArgs("on", true)...)...)
	type result struct{ write, read time.Duration }
	res := map[string]result{}
	for _, tc := range []struct{ name, uri string }{
		{"plaintext", s.unixURI(t, "plain")},
		{"TLS", p5tlsURI(s.unixURI(t, "tls"), pki.dir)},
	} {
		w := timed(func() { command{name: "nbdcopy", args: []string{"--flush", src, tc.uri}}.run(t) })
		r := timed(func() { command{name: "nbdcopy", args: []string{tc.uri, "null:"}}.run(t) })
		res[tc.name] = result{w, r}
		t.Logf("nbdcopy 256 MiB %-9s (unix socket, multi-conn): write %4.0f MB/s (%.2f s), read to null: %4.0f MB/s (%.2f s)",
			tc.name, mbps(imageSize, w), w.Seconds(), mbps(imageSize, r), r.Seconds())
	}
	p, q := res["plaintext"], res["TLS"]
	t.Logf("TLS costs: write %.1fx the time of plaintext, read %.1fx", q.write.Seconds()/p.write.Seconds(), q.read.Seconds()/p.read.Seconds())
	back := filepath.Join(t.TempDir(), "back.img")
	command{name: "nbdcopy", args: []string{p5tlsURI(s.unixURI(t, "tls"), pki.dir), back}}.run(t)
	requireSameFiles(t, src, back)
}
