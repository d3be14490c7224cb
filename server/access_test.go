package server

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/netip"
	"net/url"
	"testing"
)

func TestAccessAddrs(t *testing.T) {
	a := Access{Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.0.2.7/32")}}
	tcp := func(s string) Peer { return Peer{Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))} }
	for _, tc := range []struct {
		peer Peer
		want bool
	}{
		{tcp("10.1.2.3:5000"), true},
		{tcp("[::ffff:10.1.2.3]:5000"), true}, // IPv4-mapped, as a dual-stack listener sees it
		{tcp("11.1.2.3:5000"), false},
		{tcp("192.0.2.7:1"), true},
		{tcp("192.0.2.8:1"), false},
		{tcp("[fd12::1]:10809"), true},
		{tcp("[fe80::1]:10809"), false},
		{Peer{Unix: true, Addr: &net.UnixAddr{Name: "@", Net: "unix"}}, true}, // the socket file's mode decides
	} {
		if got := a.allowsAddr(tc.peer); got != tc.want {
			t.Errorf("allowsAddr(%v) = %v; want %v", tc.peer, got, tc.want)
		}
	}
	if !(&Access{}).allowsAddr(tcp("203.0.113.1:1")) {
		t.Error("the zero Access refuses a client")
	}
}

func TestAccessCertNames(t *testing.T) {
	u, _ := url.Parse("spiffe://example.org/backup")
	cert := &x509.Certificate{
		Subject:        pkix.Name{CommonName: "backup-3", Organization: []string{"Example"}},
		DNSNames:       []string{"backup-3.example.org"},
		EmailAddresses: []string{"ops@example.org"},
		URIs:           []*url.URL{u},
	}
	for _, tc := range []struct {
		pattern string
		want    bool
	}{
		{"CN=backup-3,O=Example", true},
		{"backup-3", true},
		{"backup-*", true},
		{"*.example.org", true},
		{"ops@example.org", true},
		{"spiffe://example.org/backup", true},
		{"backup-4", false},
		{"CN=backup-3", false}, // the subject is matched whole
		{"example.org", false},
	} {
		a := Access{CertNames: []string{tc.pattern}}
		if _, got := a.allowsCert(cert); got != tc.want {
			t.Errorf("allowsCert with %q = %v; want %v", tc.pattern, got, tc.want)
		}
	}
}
