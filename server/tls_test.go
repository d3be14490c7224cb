package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/protocol"
	"github.com/stretchr/testify/require"
)

// testCert is a self-signed certificate for "nbd", made once per run.
var testCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "nbd"},
		DNSNames:              []string{"nbd"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
})

func tlsServer(mode TLSMode) *Server {
	cert, _ := testCert()
	return &Server{
		TLSMode:   mode,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Exports: []Export{
			{Name: "pub", Backend: backend.NewMemory(1 << 20)},
			{Name: "secret", TLSOnly: true, Backend: backend.NewMemory(1 << 20)},
		},
	}
}

// startTLS negotiates NBD_OPT_STARTTLS and runs the client side of the TLS
// handshake; the client's state from before is dropped, as the server's is.
func (c *client) startTLS() {
	c.t.Helper()
	c.option(protocol.OptStartTLS, nil, protocol.RepAck)
	_, pool := testCert()
	tc := tls.Client(c.nc, &tls.Config{RootCAs: pool, ServerName: "nbd", MinVersion: tls.VersionTLS12})
	tc.SetDeadline(time.Now().Add(ioTimeout))
	require.NoError(c.t, tc.Handshake(), "TLS handshake")
	c.setConn(tc)
}

func TestStartTLS(t *testing.T) {
	run(t, func(t *testing.T, strategy string) {
		st := newServerTester(t, strategy, tlsServer(TLSOn))
		st.start()
		require.Equal(t, []string{"pub"}, st.list(), "LIST before TLS hides TLS-only exports")
		_, rep := st.infoOrGoErr(protocol.OptInfo, "secret")
		require.Equal(t, protocol.RepErrTLSReqd, rep.typ, "INFO on a TLS-only export before TLS")
		st.structuredReply()

		st.startTLS()
		// Structured replies negotiated before TLS are forgotten.
		st.option(protocol.OptSetMetaContext,
			protocol.AppendMetaContextRequest(nil, protocol.MetaContextRequest{Name: "pub", Queries: []string{protocol.MetaContextBaseAllocation}}),
			protocol.RepErrInvalid)
		st.option(protocol.OptStartTLS, nil, protocol.RepErrInvalid)
		require.Equal(t, []string{"pub", "secret"}, st.list(), "LIST after TLS")
		st.goExport("secret")
		data := pattern(100_000, 3)
		st.write(1, 10, data)
		st.wantReply(1, protocol.EOK)
		st.read(2, 10, uint32(len(data)))
		st.wantRead(2, data)
		st.disc()
		st.wantClosed()
	})
}

func TestTLSRequireThenGo(t *testing.T) {
	st := newServerTester(t, "pool", tlsServer(TLSRequire))
	st.start()
	st.option(protocol.OptList, nil, protocol.RepErrTLSReqd)
	st.startTLS()
	st.structuredReply()
	st.setMeta("pub", protocol.MetaContextBaseAllocation)
	st.goExport("pub")
	st.read(1, 0, 4096)
	st.wantStructuredRead(1, 0, make([]byte, 4096))
}

// TestTLSHandshakeFailure: a client that answers STARTTLS's ACK with
// something other than a TLS ClientHello loses the connection.
func TestTLSHandshakeFailure(t *testing.T) {
	st := newServerTester(t, "pool", tlsServer(TLSOn))
	st.start()
	st.option(protocol.OptStartTLS, nil, protocol.RepAck)
	st.writeRaw(optionBytes(protocol.OptList, nil))
	st.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	for { // the server's TLS alert, then the close
		if _, err := st.br.ReadByte(); err != nil {
			break
		}
	}
	st.wantServeResult(func(err error) bool { return err != nil }, "a TLS handshake error")
}

// TestTLSModePerConnection: a client that did not set
// NBD_FLAG_C_FIXED_NEWSTYLE is served in NOTLS mode (proto.md
// "Server-side requirements"), and in NOTLS mode no option is answered
// with NBD_REP_ERR_TLS_REQD.
func TestTLSModePerConnection(t *testing.T) {
	t.Run("require closes a non-fixed client", func(t *testing.T) {
		st := newServerTester(t, "", tlsServer(TLSRequire))
		st.wantGreeting()
		st.sendClientFlags(0)
		st.wantClosed()
	})
	t.Run("on serves a non-fixed client without TLS", func(t *testing.T) {
		st := newServerTester(t, "", tlsServer(TLSOn))
		st.wantGreeting()
		st.sendClientFlags(0)
		st.option(protocol.OptStartTLS, nil, protocol.RepErrPolicy)
		st.option(protocol.OptInfo, protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: "secret"}), protocol.RepErrPolicy)
		st.goExport("pub")
	})
	t.Run("off never answers TLS_REQD", func(t *testing.T) {
		srv := tlsServer(TLSOff)
		srv.TLSConfig = nil
		st := newServerTester(t, "", srv)
		st.start()
		st.option(protocol.OptGo, protocol.AppendExportRequest(nil, protocol.ExportRequest{Name: "secret"}), protocol.RepErrPolicy)
		st.goExport("pub")
	})
}

// TestOversizedOptionPolicies: an option too long to read is skipped, then
// answered as its kind would be: TLS_REQD before TLS under FORCEDTLS, ACK
// for ABORT, TOO_BIG otherwise.
func TestOversizedOptionPolicies(t *testing.T) {
	long := make([]byte, protocol.MaxOptionLen+1)
	t.Run("forced TLS", func(t *testing.T) {
		st := newServerTester(t, "", tlsServer(TLSRequire))
		st.start()
		st.option(protocol.OptInfo, long, protocol.RepErrTLSReqd)
		st.option(999, long, protocol.RepErrTLSReqd)
	})
	t.Run("abort", func(t *testing.T) {
		st := newServerTester(t, "", nil)
		st.start()
		st.option(protocol.OptAbort, long, protocol.RepAck)
		st.wantClosed()
	})
	t.Run("too big", func(t *testing.T) {
		st := newServerTester(t, "", nil)
		st.start()
		st.option(protocol.OptInfo, long, protocol.RepErrTooBig)
		st.goExport("mem")
	})
}

// TestIdleTimeoutSparesSlowTLSReader: over TLS too, a client that reads a
// large reply slowly but steadily gets all of it: the stall deadline
// moves on with each piece of the reply, as it does with writev.
func TestIdleTimeoutSparesSlowTLSReader(t *testing.T) {
	const size = 2 << 20
	srv := tlsServer(TLSOn)
	srv.Exports = []Export{{Name: "big", Backend: backend.NewMemory(size)}}
	srv.IdleTimeout = 150 * time.Millisecond
	srv.SendBuffer = 64 << 10
	sock, _ := serveUnix(t, srv)
	c := dialClient(t, sock)
	c.start()
	c.startTLS()
	c.goExport("big")
	c.readSlowly(size, "TLS") // the reply takes 4 idle timeouts
}
