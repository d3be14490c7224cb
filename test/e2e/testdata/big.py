# Run by nbdsh: $CONNS connections (h and more) each keep 4 requests of
# the maximum size, 32 MiB, in flight: writes of distinct data, then reads
# of all of it, verified. With a memory budget smaller than the requests in
# flight (or than one request) the server must wait or stream, never
# deadlock or fail: the budget is server-wide. Prints "OK".
import os

import nbd
from nbdcheck import complete, fail

MAX = 32 << 20
conns = int(os.environ.get("CONNS", "4"))
handles = [h]
for _ in range(conns - 1):
    o = nbd.NBD()
    o.connect_uri(os.environ["URI"])
    handles.append(o)
slots = h.get_size() // MAX
if slots < 4 * conns:
    fail("export too small for %d connections" % conns)


def data(i):
    return (b"%08d" % i) * (MAX // 8)


blocks = [(k, j, k * 4 + j) for k in range(conns) for j in range(4)]
complete(handles, [(handles[k], handles[k].aio_pwrite(data(s), s * MAX)) for k, j, s in blocks])
# Each connection reads back what the next one wrote.
bufs = [(s, nbd.Buffer(MAX), handles[(k + 1) % conns]) for k, j, s in blocks]
complete(handles, [(hh, hh.aio_pread(b, s * MAX)) for s, b, hh in bufs])
for s, b, _ in bufs:
    if b.to_bytearray() != data(s):
        fail("32 MiB block %d read back differs" % s)
for hh in handles[1:]:
    hh.shutdown()
print("OK %d connections x 4 x 32 MiB" % conns)
