package nbdclient_test

import (
	"bytes"
	"context"
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

// pipeTo serves srv on one end of a net.Pipe and returns the other.
func pipeTo(t *testing.T, srv *server.Server) net.Conn {
	cc, sc := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); srv.ServeConn(context.Background(), sc) }()
	t.Cleanup(func() { cc.Close(); <-done })
	cc.SetDeadline(time.Now().Add(10 * time.Second))
	return cc
}

// TestClientAgainstServer: the client negotiates, pipelines and parses
// simple and structured replies from nbdd's server.
func TestClientAgainstServer(t *testing.T) {
	srv := &server.Server{
		Exports: []server.Export{{Name: "a", Description: "first", Backend: backend.NewMemory(1 << 20)}},
		Logger:  slog.New(slog.DiscardHandler),
	}
	data := bytes.Repeat([]byte("nbd!"), 1024)
	for _, structured := range []bool{false, true} {
		c := nbdclient.New(pipeTo(t, srv))
		_, err := c.Start()
		require.NoError(t, err)
		list, err := c.List()
		require.NoError(t, err)
		require.Equal(t, []protocol.ServerReply{{Name: "a", Description: "first"}}, list)
		_, err = c.Go("nope")
		var refused *nbdclient.RefusedError
		require.ErrorAs(t, err, &refused)
		require.Equal(t, protocol.RepErrUnknown, refused.Rep)
		if structured {
			require.NoError(t, c.StructuredReply())
			ctxs, err := c.MetaContext(protocol.OptSetMetaContext, "a", protocol.MetaContextBaseAllocation)
			require.NoError(t, err)
			require.Len(t, ctxs, 1)
		}
		exp, err := c.Go("a", protocol.InfoBlockSize, protocol.InfoDescription)
		require.NoError(t, err)
		require.Equal(t, uint64(1<<20), exp.Size)
		d, ok := exp.Info(protocol.InfoDescription)
		require.True(t, ok)
		require.Equal(t, "first", d.Text)
		require.NotZero(t, exp.BlockSize.Preferred)

		// Pipelined: two WRITEs before either reply is read.
		for _, req := range []protocol.Request{
			{Type: protocol.CmdWrite, Cookie: 1, Offset: 0, Length: 4096},
			{Type: protocol.CmdWrite, Cookie: 2, Offset: 65536, Length: 4096},
		} {
			require.NoError(t, c.Send(req, data))
		}
		for range 2 {
			r, err := c.ReadReply()
			require.NoError(t, err)
			require.Equal(t, protocol.EOK, r.Errno)
		}
		r, err := c.Do(protocol.Request{Type: protocol.CmdRead, Cookie: 3, Offset: 65536, Length: 4096}, nil)
		require.NoError(t, err)
		require.Equal(t, structured, r.Structured)
		require.Equal(t, data, r.Data)
		r, err = c.Do(protocol.Request{Type: protocol.CmdRead, Cookie: 4, Offset: 1 << 20, Length: 1}, nil)
		require.NoError(t, err)
		require.Equal(t, protocol.EINVAL, r.Errno, "past the end")
		if structured {
			require.NotEmpty(t, r.Message, "an error chunk carries a message")
			r, err = c.Do(protocol.Request{Type: protocol.CmdBlockStatus, Cookie: 5, Length: 1 << 20}, nil)
			require.NoError(t, err)
			require.NotEmpty(t, r.Extents)
		}
		c.DiscardData = true
		r, err = c.Do(protocol.Request{Type: protocol.CmdRead, Cookie: 6, Length: 4096}, nil)
		require.NoError(t, err)
		require.Nil(t, r.Data, "DiscardData keeps none")
		c.DiscardData = false
		r, err = c.Do(protocol.Request{Type: protocol.CmdRead, Cookie: 7, Length: 4096}, nil)
		require.NoError(t, err)
		require.Equal(t, data, r.Data, "the stream is still in step after a discarded READ")
		require.NoError(t, c.Disconnect())
	}
}

// TestUnbufferedReadsNoFurther: an unbuffered client leaves whatever
// follows the handshake in the connection.
func TestUnbufferedReadsNoFurther(t *testing.T) {
	srv := &server.Server{Exports: []server.Export{{Name: "a", Backend: backend.NewMemory(4096)}}, Logger: slog.New(slog.DiscardHandler)}
	nc := pipeTo(t, srv)
	c := nbdclient.Unbuffered(nc)
	_, err := c.Open("a")
	require.NoError(t, err)
	require.Zero(t, c.Buffered())
	var hdr [protocol.RequestSize]byte
	protocol.Request{Type: protocol.CmdFlush, Cookie: 9}.Put(&hdr)
	_, err = nc.Write(hdr[:])
	require.NoError(t, err)
	var rep [protocol.SimpleReplySize]byte
	_, err = nc.Read(rep[:])
	require.NoError(t, err)
	sr, err := protocol.DecodeSimpleReply(&rep)
	require.NoError(t, err)
	require.Equal(t, uint64(9), sr.Cookie, "the reply is the connection's next bytes")
}
