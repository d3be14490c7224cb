package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// dialRawTCP opens export name on nbdd's TCP address addr from the local
// address from (127.0.0.2 and the rest of 127/8 reach the loopback too).
func dialRawTCP(addr, from, name string) (*rawClient, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return openRawOn(conn, name)
}

// TestAllowList: --allow admits only the listed client addresses (others
// are disconnected before the greeting, and logged); an export's allow=
// refuses it to other addresses with NBD_REP_ERR_POLICY and leaves it out
// of NBD_OPT_LIST; unix-socket clients are not matched.
func TestAllowList(t *testing.T) {
	requireTool(t, "nbdinfo")
	s := startNBDD(t, "--listen", "tcp://127.0.0.1:0", "--allow", "127.0.0.1", "--allow", "127.0.0.8/29",
		"--memory", "open=1M", "--memory", "near=1M,allow=127.0.0.9")
	addr := strings.Split(s.tcpURI(t, "open"), "/")[2]
	if _, err := dialRawTCP(addr, "127.0.0.2", "open"); err == nil {
		t.Errorf("client at 127.0.0.2 served; want refused by --allow")
	}
	if !s.stderr.waitFor("connection refused: address not allowed", 5*time.Second) {
		t.Errorf("no log line for the refused client:\n%s", s.stderr)
	}
	for _, from := range []string{"127.0.0.1", "127.0.0.9"} {
		c, err := dialRawTCP(addr, from, "open")
		if err != nil {
			t.Fatalf("client at %s: %v; want served", from, err)
		}
		roundTrip(t, c, 1, "client at "+from)
		c.conn.Close()
	}
	if c, err := dialRawTCP(addr, "127.0.0.9", "near"); err != nil {
		t.Errorf("export near from 127.0.0.9: %v; want served", err)
	} else {
		c.conn.Close()
	}
	_, err := dialRawTCP(addr, "127.0.0.1", "near")
	if err == nil || !strings.Contains(err.Error(), "NBD_REP_ERR_POLICY") {
		t.Errorf("export near from 127.0.0.1: %v; want NBD_REP_ERR_POLICY", err)
	}
	if !s.stderr.waitFor(`msg="client refused" conn=`, 5*time.Second) || !strings.Contains(s.stderr.String(), `export \"near\" is not available to 127.0.0.1:`) {
		t.Errorf("no log line for the client refused export near:\n%s", s.stderr)
	}
	out := command{name: "nbdinfo", args: []string{"--list", s.tcpURI(t, "open")}}.run(t)
	if strings.Contains(out, "near") || !strings.Contains(out, "open") {
		t.Errorf("nbdinfo --list from 127.0.0.1 lists %q; want open and not near", out)
	}
	// Unix-socket clients: not matched against addresses.
	if names := p5listNames(t, s.unixURI(t, "open")); !slices.Equal(names, []string{"near", "open"}) {
		t.Errorf("nbdinfo --list on the unix socket: %v; want [near open]", names)
	}
}

// TestCertificateNames: --tls-allow and an export's tls-allow= serve only
// clients whose certificate carries an allowed name; others get
// NBD_REP_ERR_POLICY, and nbdd logs why.
func TestCertificateNames(t *testing.T) {
	requireTool(t, "nbdinfo")
	pki := p5newPKI(t) // client certificate "nbdd e2e client"
	backup, intruder := t.TempDir(), t.TempDir()
	for dir, cn := range map[string]string{backup: "backup-7", intruder: "intruder"} {
		p5writePEM(t, filepath.Join(dir, "ca-cert.pem"), "CERTIFICATE", pki.ca.der)
		pki.ca.issue(t, dir, "client", cn, x509.ExtKeyUsageClientAuth)
	}
	// By subject and by common name (an export's option cannot hold a
	// subject's commas).
	s := startNBDD(t, append([]string{"--tls-allow", "CN=nbdd e2e client,O=nbdd e2e", "--tls-allow", "backup-*",
		"--memory", "a=1M", "--memory", "b=2M,tls-allow=backup-*"}, pki.serverArgs("require", true)...)...)
	uri := func(name, dir string) string { return p5tlsURI(s.unixURI(t, name), dir) }
	for _, tc := range []struct {
		dir, export string
		ok          bool
	}{
		{pki.dir, "a", true}, {pki.dir, "b", false},
		{backup, "a", true}, {backup, "b", true},
		{intruder, "a", false}, {intruder, "b", false},
	} {
		c := command{name: "nbdinfo", args: []string{"--size", uri(tc.export, tc.dir)}}
		out, err := c.try(t)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: %v\n%s; want served", c, err, out)
		case !tc.ok && (err == nil || !strings.Contains(out, "policy")):
			t.Errorf("%s: %v\n%s; want refused by policy", c, err, out)
		}
	}
	for _, want := range []string{
		`export=b reason="export \"b\" is not available to the certificate of \"CN=nbdd e2e client,O=nbdd e2e\""`,
		`export=a reason="export \"a\" is not available to the certificate of \"CN=intruder,O=nbdd e2e\""`,
	} {
		if !s.stderr.waitFor(want, 5*time.Second) {
			t.Errorf("no log line %s:\n%s", want, s.stderr)
		}
	}
}

// issueRSA makes a client certificate with an RSA key, the kind most PKIs
// issue, into dir (as ca-cert.pem, client-cert.pem, client-key.pem).
func issueRSA(t *testing.T, ca *p5ca, dir, cn string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"nbdd e2e"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p5writePEM(t, filepath.Join(dir, "ca-cert.pem"), "CERTIFICATE", ca.der)
	p5writePEM(t, filepath.Join(dir, "client-cert.pem"), "CERTIFICATE", der)
	p5writePEM(t, filepath.Join(dir, "client-key.pem"), "PRIVATE KEY", pkcs8)
}

// TestRSAClientKeys: Debian 12's libnbd and qemu (GnuTLS 3.7.9) send no
// RSA client certificate under TLS 1.3; nbdd's log then says what to do,
// and with --tls-max-version 1.2 both are served.
func TestRSAClientKeys(t *testing.T) {
	requireTool(t, "nbdinfo")
	requireTool(t, "qemu-img")
	pki := p5newPKI(t)
	rsaDir := t.TempDir()
	issueRSA(t, pki.ca, rsaDir, "rsa client")

	s13 := startNBDD(t, append([]string{"--memory", "disk=1M"}, pki.serverArgs("require", true)...)...)
	try13 := command{name: "nbdinfo", args: []string{"--size", p5tlsURI(s13.unixURI(t, "disk"), rsaDir)}}
	out, err := try13.try(t)
	if err == nil {
		t.Logf("this libnbd sends RSA client certificates under TLS 1.3 (GnuTLS 3.8.13 or later): %s", out)
	} else if !s13.stderr.waitFor("--tls-max-version 1.2", 5*time.Second) {
		t.Errorf("nbdd's log does not say what to do about the missing RSA client certificate:\n%s", s13.stderr)
	}

	s12 := startNBDD(t, append([]string{"--memory", "disk=3M", "--tls-max-version", "1.2"}, pki.serverArgs("require", true)...)...)
	info := command{name: "nbdinfo", args: []string{"--size", p5tlsURI(s12.unixURI(t, "disk"), rsaDir)}}
	if out := info.run(t); strings.TrimSpace(out) != "3145728" {
		t.Errorf("nbdinfo with an RSA client key under --tls-max-version 1.2: %q; want 3145728", out)
	}
	object := "tls-creds-x509,id=tls0,endpoint=client,dir=" + rsaDir
	opts := "driver=nbd,server.type=unix,server.path=" + s12.sock + ",export=disk,tls-creds=tls0,tls-hostname=localhost"
	qemu := command{name: "qemu-img", args: []string{"info", "--object", object, "--image-opts", opts}}
	if out := qemu.run(t); !strings.Contains(out, "virtual size: 3 MiB") {
		t.Errorf("qemu-img info with an RSA client key under --tls-max-version 1.2:\n%s", out)
	}
}
