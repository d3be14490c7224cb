// Command nbdload generates the memory-stress workloads of
// bench/strategies.sh against an NBD server on a unix socket:
//
//	nbdload -socket S -mode conns -conns 384 -size 32MiB -hold 40s
//	    384 connections each read 32 MiB once, then stay open and idle
//	    (go-nbd issue 6: "384 connections ate 12 GiB");
//	nbdload -socket S -mode spiky -total 1GiB -spike 32MiB -every 2s
//	    1 GiB of 4 KiB random reads and writes on 8 connections while a
//	    ninth reads 32 MiB every few seconds.
//
// It speaks just enough NBD (fixed newstyle, NBD_OPT_GO, simple
// replies) through nbdd's protocol package.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nbdd/nbdd/protocol"
)

func main() {
	sock := flag.String("socket", "", "server unix socket")
	mode := flag.String("mode", "conns", "conns or spiky")
	conns := flag.Int("conns", 384, "connections (conns mode)")
	size := flag.Int("size", 32<<20, "bytes read per connection (conns mode) or per spike (spiky)")
	hold := flag.Duration("hold", 40*time.Second, "how long idle connections stay open (conns mode)")
	total := flag.Int64("total", 1<<30, "bytes of small I/O (spiky mode)")
	every := flag.Duration("every", 2*time.Second, "time between spikes (spiky mode)")
	flag.Parse()
	start := time.Now()
	var err error
	switch *mode {
	case "conns":
		err = manyConns(*sock, *conns, *size, *hold)
	case "spiky":
		err = spiky(*sock, *total, *size, *every)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("elapsed %.2f\n", time.Since(start).Seconds())
}

type client struct {
	net.Conn
	br   *bufio.Reader
	size uint64
	next uint64
}

func dial(sock string) (*client, error) {
	nc, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	c := &client{Conn: nc, br: bufio.NewReaderSize(nc, 256<<10)}
	var greet [protocol.HandshakeSize]byte
	if _, err := io.ReadFull(c.br, greet[:]); err != nil {
		return nil, err
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(protocol.ClientFixedNewstyle|protocol.ClientNoZeroes))
	data := protocol.AppendExportRequest(nil, protocol.ExportRequest{})
	var oh [protocol.OptionHeaderSize]byte
	protocol.OptionHeader{Opt: protocol.OptGo, Length: uint32(len(data))}.Put(&oh)
	if _, err := c.Write(append(append(msg, oh[:]...), data...)); err != nil {
		return nil, err
	}
	return c, c.readGoReplies()
}

// readGoReplies reads NBD_OPT_GO's replies up to the ACK, keeping the
// export size from NBD_INFO_EXPORT.
func (c *client) readGoReplies() error {
	for {
		var rh [protocol.OptionReplyHeaderSize]byte
		if _, err := io.ReadFull(c.br, rh[:]); err != nil {
			return err
		}
		h, err := protocol.DecodeOptionReplyHeader(&rh)
		if err != nil {
			return err
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		switch {
		case h.Type == protocol.RepAck:
			return nil
		case h.Type.IsError():
			return fmt.Errorf("NBD_OPT_GO: %v %s", h.Type, data)
		case h.Type == protocol.RepInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == uint16(protocol.InfoExport):
			c.size = binary.BigEndian.Uint64(data[2:])
		}
	}
}

// do sends one request and waits for its reply.
func (c *client) do(cmd protocol.Cmd, off uint64, n int, payload []byte) error {
	c.next++
	var hdr [protocol.RequestSize]byte
	protocol.Request{Type: cmd, Cookie: c.next, Offset: off, Length: uint32(n)}.Put(&hdr)
	if _, err := (&net.Buffers{hdr[:], payload}).WriteTo(c); err != nil {
		return err
	}
	var rh [protocol.SimpleReplySize]byte
	if _, err := io.ReadFull(c.br, rh[:]); err != nil {
		return err
	}
	r, err := protocol.DecodeSimpleReply(&rh)
	if err != nil || r.Error != 0 {
		return fmt.Errorf("%v reply: %v %v", cmd, r.Error, err)
	}
	if cmd == protocol.CmdRead {
		_, err = c.br.Discard(n)
	}
	return err
}

func manyConns(sock string, n, size int, hold time.Duration) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	clients := make([]*client, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(sock)
			if err == nil {
				clients[i] = c
				err = c.do(protocol.CmdRead, 0, size, nil)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "nbdload: %d connections each read %d bytes; idle for %v\n", n, size, hold)
	time.Sleep(hold)
	for _, c := range clients {
		c.Close()
	}
	return nil
}

func spiky(sock string, total int64, spike int, every time.Duration) error {
	const workers, bs = 8, 4096
	done := make(chan struct{})
	spikeErr := make(chan error, 1)
	go func() { spikeErr <- spikes(sock, spike, every, done) }()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- smallIO(sock, total/workers, bs, uint64(w))
		}()
	}
	wg.Wait()
	close(done)
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return <-spikeErr
}

func smallIO(sock string, bytes int64, bs int, seed uint64) error {
	c, err := dial(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(seed, 1))
	payload := make([]byte, bs)
	for done := int64(0); done < bytes; done += int64(bs) {
		off := rng.Uint64N(c.size/uint64(bs)) * uint64(bs)
		cmd, p := protocol.CmdRead, []byte(nil)
		if rng.IntN(2) == 0 {
			cmd, p = protocol.CmdWrite, payload
		}
		if err := c.do(cmd, off, bs, p); err != nil {
			return err
		}
	}
	return nil
}

func spikes(sock string, size int, every time.Duration, done chan struct{}) error {
	c, err := dial(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := c.do(protocol.CmdRead, 0, min(size, int(c.size)), nil); err != nil {
			return err
		}
		select {
		case <-done:
			return nil
		case <-t.C:
		}
	}
}
