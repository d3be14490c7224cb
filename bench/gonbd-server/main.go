// Command gonbd-server serves one go-nbd v0.3.2 export, memory or a file,
// on a unix socket or a TCP address. It exists only as the baseline of bench/compare.sh and
// bench/strategies.sh: go-nbd is the library nbdd's backends stay
// compatible with, so its server is the reference nbdd must beat.
package main

import (
	"flag"
	"log"
	"net"
	"os"

	"github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/pojntfx/go-nbd/pkg/server"
)

func main() {
	sock := flag.String("socket", "", "unix socket path")
	tcp := flag.String("tcp", "", "listen on this TCP address instead of -socket")
	size := flag.Int64("size", 1<<30, "export size in bytes")
	file := flag.String("file", "", "serve this file (go-nbd's FileBackend) instead of memory")
	flag.Parse()
	var b backend.Backend
	if *file != "" {
		f, err := os.OpenFile(*file, os.O_RDWR, 0)
		if err != nil {
			log.Fatal(err)
		}
		b = backend.NewFileBackend(f)
	} else {
		b = backend.NewMemoryBackend(make([]byte, *size))
	}
	network, addr := "unix", *sock
	if *tcp != "" {
		network, addr = "tcp", *tcp
	} else {
		os.Remove(*sock)
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		log.Fatal(err)
	}
	exports := []*server.Export{{Name: "", Backend: b}}
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			// Options are built per connection: go-nbd writes defaults
			// into the struct it is given.
			server.Handle(c, exports, &server.Options{SupportsMultiConn: true})
		}()
	}
}
