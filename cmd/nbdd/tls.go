package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/nbdd/nbdd/server"
	"github.com/urfave/cli/v2"
)

func tlsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tls", Value: "off", Usage: "off, on (offer STARTTLS) or require (refuse plaintext)", EnvVars: []string{"NBDD_TLS"}},
		&cli.StringFlag{Name: "tls-cert", Usage: "server certificate `FILE` (PEM)", EnvVars: []string{"NBDD_TLS_CERT"}},
		&cli.StringFlag{Name: "tls-key", Usage: "server private key `FILE` (PEM)", EnvVars: []string{"NBDD_TLS_KEY"}},
		&cli.StringFlag{Name: "tls-ca", Usage: "CA `FILE` (PEM): clients must present a certificate it signed", EnvVars: []string{"NBDD_TLS_CA"}},
		&cli.StringFlag{Name: "tls-max-version", Value: "1.3", Usage: "highest TLS version offered: 1.3, or 1.2 for GnuTLS clients with RSA keys (Debian 12's libnbd and qemu send no RSA client certificate under 1.3)", EnvVars: []string{"NBDD_TLS_MAX_VERSION"}},
		&cli.StringSliceFlag{Name: "tls-allow", Usage: "serve only clients whose certificate has this `NAME`: subject (CN=...,O=...), common name, or DNS, email or URI SAN; * wildcards (repeatable; needs --tls-ca)", EnvVars: []string{"NBDD_TLS_ALLOW"}},
	}
}

// configureTLS applies --tls and its files. X.509 only: Go's crypto/tls
// has no external pre-shared keys, so TLS-PSK clients are refused (see
// docs/tls.md).
func (cfg *config) configureTLS(c *cli.Context) error {
	modes := map[string]server.TLSMode{"off": server.TLSOff, "on": server.TLSOn, "require": server.TLSRequire}
	mode, ok := modes[c.String("tls")]
	if !ok {
		return usage("--tls %q: want off, on or require", c.String("tls"))
	}
	if mode == server.TLSOff {
		for _, f := range []string{"tls-cert", "tls-key", "tls-ca", "tls-max-version", "tls-allow"} {
			if c.IsSet(f) {
				return usage("--%s needs --tls on or --tls require", f)
			}
		}
		return nil
	}
	maxVersion, ok := map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}[c.String("tls-max-version")]
	if !ok {
		return usage("--tls-max-version %q: want 1.2 or 1.3", c.String("tls-max-version"))
	}
	if len(c.StringSlice("tls-allow")) > 0 && c.String("tls-ca") == "" {
		return usage("--tls-allow needs --tls-ca: client certificates are matched by name only once the CA has verified them")
	}
	cfg.srv.Access.CertNames = c.StringSlice("tls-allow")
	if c.String("tls-cert") == "" || c.String("tls-key") == "" {
		return usage("--tls %s needs --tls-cert and --tls-key", c.String("tls"))
	}
	cert, err := tls.LoadX509KeyPair(c.String("tls-cert"), c.String("tls-key"))
	if err != nil {
		return cli.Exit(fmt.Sprintf("--tls-cert/--tls-key: %v", err), 2)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, MaxVersion: maxVersion}
	if ca := c.String("tls-ca"); ca != "" {
		pool, err := loadCA(ca)
		if err != nil {
			return cli.Exit(fmt.Sprintf("--tls-ca: %v", err), 2)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	cfg.srv.TLSConfig, cfg.srv.TLSMode = tc, mode
	return nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
