package server_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"

	"github.com/nbdd/nbdd/backend"
	"github.com/nbdd/nbdd/server"
)

// Serve a 1 GiB in-memory export named "disk". Any NBD client can then
// connect: nbdinfo nbd://127.0.0.1:PORT/disk, qemu-img, nbd-client. The
// memory is sparse, so it costs nothing until written.
func Example() {
	srv := &server.Server{
		Exports: []server.Export{{Name: "disk", Backend: backend.NewMemory(1 << 30)}},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l) // returns server.ErrServerClosed after Shutdown
	defer srv.Shutdown(context.Background())

	// Every NBD session opens with the server's greeting: two magic
	// strings and the handshake flags.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(c, greeting); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s %#x\n", greeting[:8], greeting[8:16], greeting[16:])
	// Output: NBDMAGIC IHAVEOPT 0x0003
}
