package server

import (
	"crypto/tls"
	"errors"
	"fmt"
)

// ErrTLSPSK refuses clients that offer only pre-shared-key cipher suites:
// Go's crypto/tls has no external PSK support, so nbdd serves X.509 TLS
// only.
var ErrTLSPSK = errors.New("nbd: TLS-PSK is not supported; use X.509 certificates")

// ErrNoClientCertificate ends a TLS handshake in which the client sent no
// certificate although TLSConfig requires one
// (tls.RequireAndVerifyClientCert). The error says what to do.
var ErrNoClientCertificate = errors.New("nbd: the client sent no TLS certificate, which this server requires")

// tlsConfig wraps the configured TLS settings so that a PSK-only client
// gets a clear error instead of a bare "no cipher suite in common", and
// one that sends no certificate where one is required gets a hint instead
// of "tls: client didn't provide a certificate".
func (s *Server) tlsConfig() *tls.Config {
	base := s.TLSConfig
	cfg := base.Clone()
	if cfg.ClientAuth == tls.RequireAndVerifyClientCert {
		// The same verification, with the missing certificate caught
		// here rather than inside crypto/tls, whose error has no hint.
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return noCertificateError(cs.Version)
			}
			if base.VerifyConnection != nil {
				return base.VerifyConnection(cs)
			}
			return nil
		}
	}
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if onlyPSKSuites(hello.CipherSuites) {
			return nil, ErrTLSPSK
		}
		if base.GetConfigForClient != nil {
			return base.GetConfigForClient(hello)
		}
		return nil, nil
	}
	return cfg
}

// noCertificateError explains a missing client certificate. Under TLS 1.3
// the usual cause is GnuTLS before 3.8.13 (the libnbd and qemu of Debian
// 12) with an RSA client key: it finds no RSA-PSS key to answer Go's
// certificate request with and sends nothing.
func noCertificateError(version uint16) error {
	if version == tls.VersionTLS13 {
		return fmt.Errorf("%w: under TLS 1.3, GnuTLS clients before 3.8.13 (libnbd and qemu of Debian 12) send none for an RSA key: "+
			"give the client an ECDSA key, or let clients use TLS 1.2 (nbdd serve --tls-max-version 1.2; tls.Config.MaxVersion)", ErrNoClientCertificate)
	}
	return fmt.Errorf("%w: check the client's certificate and key settings (libnbd: tls-certificates=DIR with client-cert.pem and client-key.pem)", ErrNoClientCertificate)
}

// onlyPSKSuites reports whether every cipher suite offered (other than
// signalling values and TLS 1.3 suites, which carry no key exchange) is a
// PSK suite (RFC 4279, 5487, 5489, 6655, 7905).
func onlyPSKSuites(suites []uint16) bool {
	psk, other := 0, 0
	for _, id := range suites {
		switch {
		case id == 0x00ff || id == 0x5600 || (id >= 0x1301 && id <= 0x1305):
			// TLS_EMPTY_RENEGOTIATION_INFO_SCSV, TLS_FALLBACK_SCSV, TLS 1.3
		case isPSKSuite(id):
			psk++
		default:
			other++
		}
	}
	return psk > 0 && other == 0
}

func isPSKSuite(id uint16) bool {
	ranges := [][2]uint16{
		{0x008a, 0x0095}, {0x00a8, 0x00b9}, {0xc033, 0xc03b}, {0xc064, 0xc06b},
		{0xc08e, 0xc095}, {0xc0a4, 0xc0ab}, {0xccab, 0xccae}, {0xd001, 0xd005},
	}
	for _, r := range ranges {
		if id >= r[0] && id <= r[1] {
			return true
		}
	}
	return false
}
