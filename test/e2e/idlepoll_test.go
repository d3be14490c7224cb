package e2e

import "testing"

// TestIdlePollQueueDepth1: libnbd at queue depth 1, on a unix socket and
// over TCP, with the reader's idle poll (the default) and without it
// (--no-idle-poll): 4 KiB writes and reads back in a tight loop (the poll
// finds each next request), the same with pauses of 1 ms (every poll
// misses and the connection backs off), and 64 KiB transfers between
// (after which the reader does not poll). Every read returns what was
// written.
func TestIdlePollQueueDepth1(t *testing.T) {
	for _, flags := range [][]string{nil, {"--no-idle-poll"}} {
		s := startNBDD(t, append([]string{"--memory", "mem=16M", "--listen", "tcp://127.0.0.1:0"}, flags...)...)
		for _, uri := range []string{s.unixURI(t, "mem"), s.tcpURI(t, "mem")} {
			p5nbdsh(t, idlePollScript, "URI="+uri)
		}
	}
}

const idlePollScript = `
import os, random, time
c = nbd.NBD()
c.connect_uri(os.environ["URI"])
rng = random.Random(1)
size = c.get_size()
for i in range(1500):
    n = 65536 if i % 50 == 0 else 4096
    off = rng.randrange(size // n) * n
    data = os.urandom(n)
    c.pwrite(data, off)
    assert c.pread(n, off) == data, (i, off, n)
    if 500 <= i < 600:
        time.sleep(0.001)
c.shutdown()
print("OK")
`
