# Run by nbdsh against an nbdd started with
#   --fault read:1M-2M:eio,write:4M-5M:eio,read:6M-7M:short
# Requests touching a faulty range get EIO; every other request, before
# and after, on this and on a second connection, succeeds. 64 concurrent
# reads, every other one in the faulty range, fail exactly where they
# should. Prints "OK" on success.
#
# The first 8 MiB (but the write-faulty fifth) are written first: a large
# structured READ of a hole may be answered from the block map without
# reading the backend, so the read faults are placed on allocated data, as
# on a disk holding a file system.
import errno
import os

import nbd
from nbdcheck import alive, expect_errno, fail

M = 1 << 20
EIO = errno.EIO

fill = bytes(range(1, 256)) * (M // 255 + 1)
for i in (0, 1, 2, 3, 5, 6, 7):
    h.pwrite(fill[:M], i * M)
if h.pread(4096, 0) != fill[:4096]:
    fail("read at 0: want the data written")
expect_errno("read in faulty range", EIO, lambda: h.pread(4096, M))
expect_errno("read straddling its start", EIO, lambda: h.pread(8192, M - 4096))
if h.pread(4096, 2 * M) != fill[:4096]:
    fail("read at 2M (range end is exclusive): want the data written")
expect_errno("short read", EIO, lambda: h.pread(65536, 6 * M))
alive(h, "after read faults")

expect_errno("write in faulty range", EIO, lambda: h.pwrite(b"w" * 4096, 4 * M + 512))
expect_errno("write straddling its end", EIO, lambda: h.pwrite(b"w" * 8192, 5 * M - 4096))
data = b"after" * 1000
h.pwrite(data, 3 * M)
if h.pread(len(data), 3 * M) != data:
    fail("write at 3M: read back differs")
h.flush()

# 64 concurrent reads of 64 KiB, odd ones in the faulty read range.
cookies = []
for i in range(64):
    off = M + (i // 2) * 32768 if i % 2 else 8 * M + i * 65536
    cookies.append((i, h.aio_pread(nbd.Buffer(65536), off)))
failed = set()
pending = dict(cookies)
while pending:
    h.poll(-1)
    for i, c in list(cookies):
        if i not in pending:
            continue
        try:
            if h.aio_command_completed(c):
                del pending[i]
        except nbd.Error as e:
            if e.errnum != EIO:
                fail("concurrent read %d: %s; want EIO" % (i, e))
            failed.add(i)
            del pending[i]
want = set(range(1, 64, 2))
if failed != want:
    fail("concurrent reads failed: %s; want the odd ones" % sorted(failed))
print("concurrent: %d of 64 failed, as placed" % len(failed))
alive(h, "after concurrent faults")

h2 = nbd.NBD()
h2.connect_uri(os.environ["URI"])
alive(h2, "second connection", off=16 * M)
h2.shutdown()

# Last, as a failure here may cost the connection: a READ larger than one
# buffer chunk that reaches the faulty range after its first part. Under
# structured replies (negotiated by libnbd) an error chunk can follow data
# chunks, so even a streaming server must answer EIO and keep going.
expect_errno("large read reaching it", EIO, lambda: h.pread(M, M // 2))
alive(h, "after the large read")
print("OK")
