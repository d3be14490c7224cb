# Run by nbdsh against an export whose maximum request size is
# $MAX_REQUEST. With libnbd's strict mode off, out-of-range and oversized
# requests reach the server: reads past the end and oversized reads get
# EINVAL, writes past the end ENOSPC, and the connection survives; so does
# a write over the maximum but within 32 MiB, which gets EINVAL (proto.md
# "Size constraints": a client that did not negotiate sizes gets a clean
# error); a write over 32 MiB too is a framing violation and the server
# disconnects. A
# second connection to $URI must then be served. Prints "OK" on success.
import errno
import os

import nbd
from nbdcheck import alive, expect_errno, fail

maxreq = int(os.environ["MAX_REQUEST"])
size = h.get_size()
h.set_strict_mode(0)

expect_errno("read past end", errno.EINVAL, lambda: h.pread(1024, size - 512))
alive(h, "after read past end")
expect_errno("write past end", errno.ENOSPC, lambda: h.pwrite(b"x" * 1024, size - 512))
alive(h, "after write past end")
expect_errno("zero past end", errno.ENOSPC, lambda: h.zero(1024, size - 512))
alive(h, "after zero past end")
expect_errno("oversized read", errno.EINVAL, lambda: h.pread(2 * maxreq, 0))
alive(h, "after oversized read")

expect_errno("write over the maximum", errno.EINVAL, lambda: h.pwrite(bytes(2 * maxreq), 0))
alive(h, "after write over the maximum")

try:
    h.pwrite(bytes(32 * 1024 * 1024 + 4096), 0)
    fail("oversized write succeeded; want a disconnect")
except nbd.Error as e:
    print("oversized write:", e)
if not h.aio_is_dead() and not h.aio_is_closed():
    try:
        h.pread(512, 0)
        fail("connection still served after an oversized write")
    except nbd.Error:
        pass

h2 = nbd.NBD()
h2.connect_uri(os.environ["URI"])
alive(h2, "second connection")
h2.shutdown()
print("OK")
