// Command nbdload generates the memory-stress workloads of
// bench/strategies.sh against an NBD server on a unix socket:
//
//	nbdload -socket S -mode conns -conns 384 -size 32MiB -hold 40s
//	    384 connections each read 32 MiB once, then stay open and idle
//	    (go-nbd issue 6: "384 connections ate 12 GiB");
//	nbdload -socket S -mode spiky -total 1GiB -spike 32MiB -every 2s
//	    1 GiB of 4 KiB random reads and writes on 8 connections while a
//	    ninth reads 32 MiB every few seconds;
//	nbdload -socket S -mode trickle -conns 200 -every 20ms -hold 10s
//	    200 connections each make one 4 KiB random read every 20 ms
//	    for 10 s, and the requests made are printed (bench/idlepoll.sh).
//
// It speaks NBD through nbdd's client package (fixed newstyle, NBD_OPT_GO,
// simple replies).
package main

import (
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nbdd/nbdd/internal/nbdclient"
	"github.com/nbdd/nbdd/protocol"
)

func main() {
	sock := flag.String("socket", "", "server unix socket")
	mode := flag.String("mode", "conns", "conns, spiky or trickle")
	conns := flag.Int("conns", 384, "connections (conns and trickle modes)")
	size := flag.Int("size", 32<<20, "bytes read per connection (conns mode) or per spike (spiky)")
	hold := flag.Duration("hold", 40*time.Second, "how long idle connections stay open (conns mode), or the load lasts (trickle)")
	total := flag.Int64("total", 1<<30, "bytes of small I/O (spiky mode)")
	every := flag.Duration("every", 2*time.Second, "time between spikes (spiky mode), or a connection's reads (trickle)")
	flag.Parse()
	start := time.Now()
	var err error
	switch *mode {
	case "conns":
		err = manyConns(*sock, *conns, *size, *hold)
	case "spiky":
		err = spiky(*sock, *total, *size, *every)
	case "trickle":
		err = trickle(*sock, *conns, *every, *hold)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("elapsed %.2f\n", time.Since(start).Seconds())
}

// client is nbdd's NBD client (internal/nbdclient) on the default export.
type client struct {
	*nbdclient.Conn
	nc   net.Conn
	size uint64
	next uint64
}

func dial(sock string) (*client, error) {
	nbd, nc, exp, err := nbdclient.Dial("unix", sock, "", time.Minute)
	if err != nil {
		return nil, err
	}
	nbd.DiscardData = true // the load generator keeps none of the data it reads
	return &client{Conn: nbd, nc: nc, size: exp.Size}, nil
}

func (c *client) Close() error { return c.nc.Close() }

// do sends one request and waits for its reply.
func (c *client) do(cmd protocol.Cmd, off uint64, n int, payload []byte) error {
	c.next++
	r, err := c.Do(protocol.Request{Type: cmd, Cookie: c.next, Offset: off, Length: uint32(n)}, payload)
	if err == nil && r.Errno != protocol.EOK {
		err = fmt.Errorf("%v reply: %v", cmd, r.Errno)
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

// trickle runs n connections that each read 4 KiB at a random offset
// every interval until hold has passed, and prints the requests made.
func trickle(sock string, n int, every, hold time.Duration) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	counts := make([]int, n)
	end := time.Now().Add(hold)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(sock)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			t := time.NewTicker(every)
			defer t.Stop()
			for time.Now().Before(end) {
				off := rng.Uint64N(c.size/4096) * 4096
				if err := c.do(protocol.CmdRead, off, 4096, nil); err != nil {
					errs <- err
					return
				}
				counts[i]++
				<-t.C
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	total := 0
	for _, k := range counts {
		total += k
	}
	fmt.Printf("requests %d\n", total)
	return nil
}
