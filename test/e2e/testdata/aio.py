# Run by nbdsh (the handle h is connected to $URI). 64 concurrent aio
# writes at unaligned offsets, then 64 concurrent mixed reads and writes,
# then flush, trim and zero (with and without NO_HOLE) in flight alongside
# reads, all checked against a model of the device that starts as zeroes
# (a fresh memory export). Finally the whole device is read back, compared
# with the model, and, if $DUMP is set, written to that file, so that a
# differential test can compare two servers byte for byte. Prints
# "OK sha256=..." on success.
import hashlib
import os
import random
import sys

import nbd

rng = random.Random(int(os.environ.get("SEED", "1")))
size = h.get_size()
N = 64
slot = size // N
assert slot >= 256 << 10, "export too small: %d" % size
model = bytearray(size)


def fail(msg):
    print("FAIL", msg)
    sys.exit(1)


def wait_all(cookies):
    """Poll until every cookie has completed; aio_command_completed raises
    nbd.Error if the command failed."""
    pending = set(cookies)
    peak = h.aio_in_flight()
    while pending:
        h.poll(-1)
        peak = max(peak, h.aio_in_flight())
        for c in list(pending):
            if h.aio_command_completed(c):
                pending.discard(c)
    return peak


def check(off, got, what):
    want = model[off:off + len(got)]
    if got != want:
        i = next(i for i in range(len(got)) if got[i] != want[i])
        fail("%s: byte %d differs: got %#x, want %#x" % (what, off + i, got[i], want[i]))


# Phase 1: 64 writes in flight, one per slot, at odd offsets.
cookies, regions = [], []
for i in range(N):
    off = i * slot + rng.randrange(1, 4096)
    n = rng.randrange(1, slot // 4)
    data = rng.randbytes(n)
    model[off:off + n] = data
    regions.append((off, n))
    cookies.append(h.aio_pwrite(data, off))
peak1 = wait_all(cookies)

# Phase 2: 32 reads of phase-1 regions and 32 writes to the untouched second
# half of other slots, all 64 in flight together.
cookies, reads = [], []
for i in range(0, N, 2):
    off, n = regions[i]
    buf = nbd.Buffer(n)
    reads.append((off, buf))
    cookies.append(h.aio_pread(buf, off))
for i in range(1, N, 2):
    off = i * slot + slot // 2 + rng.randrange(0, 4096)
    n = rng.randrange(1, slot // 4)
    data = rng.randbytes(n)
    model[off:off + n] = data
    cookies.append(h.aio_pwrite(data, off))
peak2 = wait_all(cookies)
for off, buf in reads:
    check(off, buf.to_bytearray(), "phase 2 read")

# Phase 3: flush, trim, zero and zero with NO_HOLE in flight with reads of
# other slots. Both memory servers read trimmed space as zeroes.
cookies = [h.aio_flush()]
trims = [(3 * slot, slot), (5 * slot + 4096, 2 * 4096)]
zeros = [(7 * slot + 17, slot // 3), (9 * slot + 1, 3 * slot // 2)]
for off, n in trims:
    model[off:off + n] = bytes(n)
    cookies.append(h.aio_trim(n, off))
for off, n in zeros[:1]:
    model[off:off + n] = bytes(n)
    cookies.append(h.aio_zero(n, off))
for off, n in zeros[1:]:
    model[off:off + n] = bytes(n)
    cookies.append(h.aio_zero(n, off, flags=nbd.CMD_FLAG_NO_HOLE))
reads = []
for i in (20, 21, 40, 63):
    off, n = regions[i]
    buf = nbd.Buffer(n)
    reads.append((off, buf))
    cookies.append(h.aio_pread(buf, off))
wait_all(cookies)
for off, buf in reads:
    check(off, buf.to_bytearray(), "phase 3 read")
h.flush()

# Phase 4: read the whole device, 16 reads of 1 MiB in flight at a time.
chunk = 1 << 20
whole = bytearray()
for base in range(0, size, 16 * chunk):
    bufs = []
    for off in range(base, min(size, base + 16 * chunk), chunk):
        buf = nbd.Buffer(min(chunk, size - off))
        bufs.append((off, buf, h.aio_pread(buf, off)))
    wait_all([c for _, _, c in bufs])
    for off, buf, _ in bufs:
        whole += buf.to_bytearray()
check(0, whole, "final read")
if os.environ.get("DUMP"):
    with open(os.environ["DUMP"], "wb") as f:
        f.write(whole)
print("peak in flight: phase 1 %d, phase 2 %d" % (peak1, peak2))
print("OK sha256=" + hashlib.sha256(whole).hexdigest())
