package nbdkernel

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
	"github.com/nbdd/nbdd/server"
	"github.com/stretchr/testify/require"
)

// serveOverPipe runs srv on one end of a net.Pipe and returns the other.
func serveOverPipe(t *testing.T, srv *server.Server) net.Conn {
	t.Helper()
	if srv.Logger == nil {
		srv.Logger = slog.New(slog.DiscardHandler)
	}
	client, conn := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), conn)
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("ServeConn did not return after the client closed")
		}
	})
	client.SetDeadline(time.Now().Add(10 * time.Second))
	return client
}

func TestHandshakeAgainstServer(t *testing.T) {
	srv := &server.Server{Exports: []server.Export{
		{Name: "x", Backend: backend.NewMemory(1 << 20)},
		{Name: "ro", Backend: backend.NewMemory(64 << 10), ReadOnly: true},
	}}
	for _, tc := range []struct {
		name     string
		size     uint64
		set, not protocol.TransmissionFlag
	}{
		{"x", 1 << 20, protocol.FlagHasFlags | protocol.FlagSendFlush | protocol.FlagSendFUA | protocol.FlagCanMultiConn, protocol.FlagReadOnly},
		{"ro", 64 << 10, protocol.FlagHasFlags | protocol.FlagReadOnly, protocol.FlagSendWriteZeroes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serveOverPipe(t, srv)
			exp, err := Handshake(c, tc.name)
			require.NoError(t, err)
			require.Equal(t, tc.size, exp.Size, "size")
			require.Equal(t, tc.set, exp.Flags&tc.set, "flags %v", exp.Flags)
			require.Zero(t, exp.Flags&tc.not, "flags %v", exp.Flags)
			require.Equal(t, protocol.BlockSize{Min: 1, Preferred: 4096, Max: protocol.DefaultMaxPayload}, exp.BlockSize)
			requireTransmission(t, c)
		})
	}
}

// requireTransmission proves the handshake consumed exactly its own bytes:
// a READ request on the same stream gets its reply.
func requireTransmission(t *testing.T, c io.ReadWriter) {
	t.Helper()
	rep, err := nbdclient.Unbuffered(c).Do(protocol.Request{Type: protocol.CmdRead, Cookie: 42, Length: 512}, nil)
	require.NoError(t, err)
	require.Equal(t, protocol.EOK, rep.Errno)
	require.Len(t, rep.Data, 512)
}

func TestHandshakeDefaultExport(t *testing.T) {
	srv := &server.Server{Exports: []server.Export{{Name: "only", Backend: backend.NewMemory(4096)}}}
	exp, err := Handshake(serveOverPipe(t, srv), "")
	require.NoError(t, err)
	require.Equal(t, uint64(4096), exp.Size)
}

func TestHandshakeUnknownExport(t *testing.T) {
	srv := &server.Server{Exports: []server.Export{{Name: "x", Backend: backend.NewMemory(4096)}}}
	_, err := Handshake(serveOverPipe(t, srv), "nope")
	require.ErrorIs(t, err, ErrRefused)
	require.ErrorContains(t, err, `"nope": NBD_REP_ERR_UNKNOWN: unknown export "nope"`)
}

func TestHandshakeNameTooLong(t *testing.T) {
	_, err := Handshake(nil, string(make([]byte, protocol.MaxStringLen+1)))
	require.ErrorContains(t, err, "at most 4096")
}

// fakeServer is a scripted server: it runs script on the server end of a
// pipe and reports its error through the returned channel.
func fakeServer(t *testing.T, script func(s *scripted) error) (net.Conn, <-chan error) {
	t.Helper()
	client, conn := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		defer conn.Close()
		errc <- script(&scripted{t: t, c: conn})
	}()
	t.Cleanup(func() { client.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return client, errc
}

type scripted struct {
	t *testing.T
	c net.Conn
}

func (s *scripted) greet(flags protocol.HandshakeFlag) error {
	_, err := s.clientFlags(flags)
	return err
}

// clientFlags sends the greeting and returns the client's flags.
func (s *scripted) clientFlags(flags protocol.HandshakeFlag) (protocol.ClientFlag, error) {
	var g [protocol.HandshakeSize]byte
	protocol.PutHandshake(&g, flags)
	if _, err := s.c.Write(g[:]); err != nil {
		return 0, err
	}
	var cf [4]byte
	_, err := io.ReadFull(s.c, cf[:])
	return protocol.ClientFlag(binary.BigEndian.Uint32(cf[:])), err
}

func (s *scripted) option() (protocol.OptionHeader, []byte, error) {
	var h [protocol.OptionHeaderSize]byte
	if _, err := io.ReadFull(s.c, h[:]); err != nil {
		return protocol.OptionHeader{}, nil, err
	}
	oh, err := protocol.DecodeOptionHeader(&h)
	if err != nil {
		return oh, nil, err
	}
	data := make([]byte, oh.Length)
	_, err = io.ReadFull(s.c, data)
	return oh, data, err
}

func (s *scripted) reply(opt protocol.Opt, typ protocol.Rep, data []byte) error {
	_, err := s.c.Write(protocol.AppendOptionReply(nil, opt, typ, data))
	return err
}

func infoExport(size uint64, flags protocol.TransmissionFlag) []byte {
	return protocol.AppendInfoExport(nil, size, flags)
}

func TestHandshakeSendsFixedNewstyleAndGo(t *testing.T) {
	c, errc := fakeServer(t, func(s *scripted) error {
		cf, err := s.clientFlags(protocol.FlagFixedNewstyle | protocol.FlagNoZeroes)
		if err != nil {
			return err
		}
		if cf != protocol.ClientFixedNewstyle|protocol.ClientNoZeroes {
			return errors.New("client flags " + cf.String())
		}
		oh, data, err := s.option()
		if err != nil {
			return err
		}
		req, err := protocol.DecodeExportRequest(data)
		if err != nil {
			return err
		}
		if oh.Opt != protocol.OptGo || req.Name != "disk" || len(req.Infos) != 1 || req.Infos[0] != protocol.InfoBlockSize {
			return errors.New("unexpected option " + oh.Opt.String())
		}
		// An unknown information type first: it must be ignored.
		if err := s.reply(protocol.OptGo, protocol.RepInfo, []byte{0x7f, 0x7f, 1, 2, 3}); err != nil {
			return err
		}
		if err := s.reply(protocol.OptGo, protocol.RepInfo, protocol.AppendInfoString(nil, protocol.InfoName, "disk")); err != nil {
			return err
		}
		if err := s.reply(protocol.OptGo, protocol.RepInfo, infoExport(8<<20, protocol.FlagHasFlags|protocol.FlagSendTrim)); err != nil {
			return err
		}
		if err := s.reply(protocol.OptGo, protocol.RepInfo, protocol.AppendInfoBlockSize(nil, protocol.BlockSize{Min: 512, Preferred: 4096, Max: 1 << 20})); err != nil {
			return err
		}
		return s.reply(protocol.OptGo, protocol.RepAck, nil)
	})
	exp, err := Handshake(c, "disk")
	require.NoError(t, err)
	require.NoError(t, <-errc)
	require.Equal(t, Export{Size: 8 << 20, Flags: protocol.FlagHasFlags | protocol.FlagSendTrim,
		BlockSize: protocol.BlockSize{Min: 512, Preferred: 4096, Max: 1 << 20}}, exp)
}

// exportNameServer answers NBD_OPT_EXPORT_NAME with size and flags, padded
// unless the client asked for NO_ZEROES.
func exportNameServer(s *scripted, noZeroes bool) error {
	oh, data, err := s.option()
	if err != nil {
		return err
	}
	if oh.Opt != protocol.OptExportName || string(data) != "old" {
		return errors.New("want NBD_OPT_EXPORT_NAME old, got " + oh.Opt.String())
	}
	b := make([]byte, protocol.ExportNameReplySize+protocol.ExportNamePadding)
	protocol.PutExportNameReply((*[protocol.ExportNameReplySize]byte)(b), 1<<30, protocol.FlagHasFlags|protocol.FlagSendFlush)
	if noZeroes {
		b = b[:protocol.ExportNameReplySize]
	}
	_, err = s.c.Write(b)
	return err
}

func TestHandshakeFallsBackToExportName(t *testing.T) {
	want := Export{Size: 1 << 30, Flags: protocol.FlagHasFlags | protocol.FlagSendFlush}
	t.Run("not fixed newstyle", func(t *testing.T) {
		c, errc := fakeServer(t, func(s *scripted) error {
			cf, err := s.clientFlags(0)
			if err != nil {
				return err
			}
			if cf != 0 {
				return errors.New("client flags " + cf.String())
			}
			return exportNameServer(s, false)
		})
		exp, err := Handshake(c, "old")
		require.NoError(t, err)
		require.NoError(t, <-errc)
		require.Equal(t, want, exp)
	})
	t.Run("NBD_OPT_GO unsupported", func(t *testing.T) {
		c, errc := fakeServer(t, func(s *scripted) error {
			if err := s.greet(protocol.FlagFixedNewstyle | protocol.FlagNoZeroes); err != nil {
				return err
			}
			if _, _, err := s.option(); err != nil {
				return err
			}
			if err := s.reply(protocol.OptGo, protocol.RepErrUnsup, nil); err != nil {
				return err
			}
			return exportNameServer(s, true)
		})
		exp, err := Handshake(c, "old")
		require.NoError(t, err)
		require.NoError(t, <-errc)
		require.Equal(t, want, exp)
	})
	t.Run("unknown export closes", func(t *testing.T) {
		c, _ := fakeServer(t, func(s *scripted) error {
			if err := s.greet(0); err != nil {
				return err
			}
			_, _, err := s.option()
			return err // and close
		})
		_, err := Handshake(c, "old")
		require.ErrorIs(t, err, ErrRefused)
	})
}

func TestHandshakeRejectsBrokenServers(t *testing.T) {
	greetThenGo := func(replies ...[]byte) func(s *scripted) error {
		return func(s *scripted) error {
			if err := s.greet(protocol.FlagFixedNewstyle); err != nil {
				return err
			}
			if _, _, err := s.option(); err != nil {
				return err
			}
			for _, r := range replies {
				if _, err := s.c.Write(r); err != nil {
					return err
				}
			}
			return nil
		}
	}
	reply := func(opt protocol.Opt, typ protocol.Rep, data []byte) []byte {
		return protocol.AppendOptionReply(nil, opt, typ, data)
	}
	longHeader := reply(protocol.OptGo, protocol.RepInfo, nil)
	binary.BigEndian.PutUint32(longHeader[16:], maxReplyLen+1)
	for _, tc := range []struct {
		name   string
		script func(s *scripted) error
		want   error
		msg    string
	}{
		{"oldstyle", func(s *scripted) error {
			b := binary.BigEndian.AppendUint64(nil, protocol.NBDMagic)
			b = binary.BigEndian.AppendUint64(b, 0x00420281861253) // oldstyle
			_, err := s.c.Write(append(b, 0, 0))
			return err
		}, ErrUnsupportedServer, "oldstyle"},
		{"bad magic", func(s *scripted) error {
			_, err := s.c.Write(make([]byte, protocol.HandshakeSize))
			return err
		}, protocol.ErrBadMagic, "greeting magic"},
		{"ack without export", greetThenGo(reply(protocol.OptGo, protocol.RepAck, nil)), ErrUnsupportedServer, "without NBD_INFO_EXPORT"},
		{"short export info", greetThenGo(reply(protocol.OptGo, protocol.RepInfo, []byte{0, 0, 1})), ErrUnsupportedServer, "want 12"},
		{"reply to another option", greetThenGo(reply(protocol.OptInfo, protocol.RepAck, nil)), ErrUnsupportedServer, "waiting for NBD_OPT_GO"},
		{"oversized reply", greetThenGo(longHeader), ErrUnsupportedServer, "reply of 65537 bytes"},
		{"policy refusal", greetThenGo(reply(protocol.OptGo, protocol.RepErrPolicy, []byte("go away"))), ErrRefused, "NBD_REP_ERR_POLICY: go away"},
		{"unexpected reply type", greetThenGo(reply(protocol.OptGo, protocol.RepServer, nil)), ErrUnsupportedServer, "NBD_REP_SERVER"},
		{"closed mid-reply", greetThenGo(reply(protocol.OptGo, protocol.RepInfo, infoExport(1, 0))[:25]), io.ErrUnexpectedEOF, "read NBD_OPT_GO NBD_REP_INFO data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := fakeServer(t, tc.script)
			_, err := Handshake(c, "x")
			require.ErrorIs(t, err, tc.want)
			require.ErrorContains(t, err, tc.msg)
		})
	}
}
