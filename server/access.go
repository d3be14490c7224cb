package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
)

// Access limits which clients may use a server (Server.Access) or an
// export (Export.Access); its zero value allows every client. A client
// must pass both the server's and the export's. nbdkit's ip filter and
// --tls-verify-peer, qemu-nbd's --tls-authz and nbd-server's authfile
// do the same.
type Access struct {
	// Addrs are the client addresses allowed; empty allows any. Clients
	// on a unix socket are not matched against it: the socket file's
	// owner and mode decide who may connect there. A client refused by
	// the server's list is disconnected before the greeting (Serve and
	// ServeConn of a net.Conn); one refused by an export's gets
	// NBD_REP_ERR_POLICY for that export, which NBD_OPT_LIST leaves out.
	Addrs []netip.Prefix
	// CertNames are the client certificates allowed, by name; empty
	// allows any. A client must have negotiated TLS and presented a
	// certificate (verified against TLSConfig.ClientCAs, which should be
	// set) one of whose names matches an entry: its subject in RFC 4514
	// form ("CN=backup,O=Example"), its subject common name, or one of
	// its DNS, email or URI subject alternative names. Entries may hold
	// path.Match wildcards ("*.backup.example.org"). A client that does
	// not match gets NBD_REP_ERR_POLICY (NBD_REP_ERR_TLS_REQD before TLS).
	CertNames []string
}

// allowsAddr reports whether a client at peer may connect.
func (a *Access) allowsAddr(p Peer) bool {
	if len(a.Addrs) == 0 || p.Unix || p.Addr == nil {
		return true
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, pfx := range a.Addrs {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

// allowsCert reports whether cert names a client the list allows, and
// which of its names matched.
func (a *Access) allowsCert(cert *x509.Certificate) (string, bool) {
	names := certNames(cert)
	for _, pattern := range a.CertNames {
		for _, n := range names {
			if ok, _ := path.Match(pattern, n); ok {
				return n, true
			}
		}
	}
	return "", false
}

// certNames are the names a certificate is matched by: its subject, its
// common name and its subject alternative names.
func certNames(cert *x509.Certificate) []string {
	names := []string{cert.Subject.String()}
	if cert.Subject.CommonName != "" {
		names = append(names, cert.Subject.CommonName)
	}
	names = append(names, cert.DNSNames...)
	names = append(names, cert.EmailAddresses...)
	for _, u := range cert.URIs {
		names = append(names, u.String())
	}
	return names
}

// errAccessDenied is what every accessError is (errors.Is).
var errAccessDenied = errors.New("nbd: access denied")

// accessError refuses a client an export or the server; the client gets
// NBD_REP_ERR_POLICY with the reason, or a closed connection.
type accessError struct{ reason string }

func (e *accessError) Error() string        { return "nbd: access denied: " + e.reason }
func (e *accessError) Is(target error) bool { return target == errAccessDenied }

func denied(format string, args ...any) error {
	return &accessError{reason: fmt.Sprintf(format, args...)}
}

// checkAccess decides whether the connection's client may use e, by the
// server's and e's Access.
func (c *conn) checkAccess(e *Export) error {
	if !e.Access.allowsAddr(c.peer) {
		return denied("export %q is not available to %s", e.Name, c.peer)
	}
	for _, a := range []*Access{&c.srv.Access, &e.Access} {
		if len(a.CertNames) == 0 {
			continue
		}
		cert := c.peerCertificate()
		switch {
		case !c.tls && c.tlsMode() != TLSOff:
			return errTLSRequired
		case !c.tls:
			return denied("export %q needs a client certificate, and so TLS", e.Name)
		case cert == nil:
			return denied("export %q needs a client certificate; the client sent none", e.Name)
		}
		if _, ok := a.allowsCert(cert); !ok {
			return denied("export %q is not available to the certificate of %q", e.Name, cert.Subject.String())
		}
	}
	return nil
}

// peerCertificate is the client's certificate, or nil before TLS or when
// it sent none.
func (c *conn) peerCertificate() *x509.Certificate {
	tc, ok := c.rwc.(*tls.Conn)
	if !ok {
		return nil
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil
	}
	return certs[0]
}

// admitAddr applies Server.Access.Addrs to a new connection: a refused
// client is logged and disconnected before the greeting.
func (s *Server) admitAddr(nc net.Conn, p Peer) error {
	if s.Access.allowsAddr(p) {
		return nil
	}
	s.logger().Warn("connection refused: address not allowed", p.logAttrs()...)
	s.connCounts.refusedAddr.Add(1)
	nc.Close()
	return denied("%s is not in Server.Access.Addrs", p)
}
