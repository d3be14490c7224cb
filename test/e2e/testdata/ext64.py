# Run by nbdsh 1.22 or later, unconnected: the script connects h to $URI
# itself, asking for base:allocation and, unless $NO_EXT is set, for
# extended headers (libnbd's default). Exercises 64-bit effect lengths on
# an export of at least 8 GiB: data written across the 4 GiB boundary, one
# WRITE_ZEROES of 3 GiB, one TRIM of 1 GiB + 8 KiB, and block status over
# the whole export. Without extended headers each large operation is cut
# into requests of at most 1 GiB, so the bytes come out the same either
# way; what differs is the number of requests, which the script reports.
#
# Prints one line "RESULT {json}" and then "OK": extended (negotiated or
# not), mutations (requests sent for the writes, zero, trim and flush:
# 7 when each large operation is one request), status_requests (block
# status requests to cover the export), hashes (sha256 of each checked
# region) and extents (merged, as [offset, length, flags]).
# Every range reported NBD_STATE_ZERO is checked to read as zeroes at its
# start and end, and the extents must tile the export.
import hashlib
import json
import os
import sys

import nbd

G = 1 << 30
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
if os.environ.get("NO_EXT"):
    h.set_request_extended_headers(False)
h.connect_uri(os.environ["URI"])
ext = h.get_extended_headers_negotiated()
size = h.get_size()
if size < 8 * G:
    print("FAIL export of %d bytes; want at least 8 GiB" % size)
    sys.exit(1)
step = size if ext else G


def pieces(off, n):
    while n > 0:
        k = min(n, step)
        yield off, k
        off, n = off + k, n - k


def pattern(seed, n):
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


start = h.stats_chunks_sent()
writes = [(0, 1), (4 * G - 32768, 2), (6 * G, 3), (8 * G - 65536, 4)]
for off, seed in writes:
    h.pwrite(pattern(seed, 65536), off)
for off, n in pieces(G, 3 * G):  # zeroes half of the write across 4 GiB
    h.zero(n, off)
for off, n in pieces(6 * G - 4096, G + 8192):  # trims the write at 6 GiB
    h.trim(n, off)
h.flush()
mutations = h.stats_chunks_sent() - start
start = h.stats_chunks_sent()

extents = []


def collect(meta, off, entries, err):
    if meta != nbd.CONTEXT_BASE_ALLOCATION:
        return 0
    for i in range(0, len(entries), 2):
        n, flags = entries[i], entries[i + 1]
        if extents and extents[-1][2] == flags and extents[-1][0] + extents[-1][1] == off:
            extents[-1][1] += n
        else:
            extents.append([off, n, flags])
        off += n
    return 0


off = 0
while off < size:
    before = extents[-1][0] + extents[-1][1] if extents else 0
    h.block_status(min(step, size - off), off, lambda m, o, e, err: collect(m, o, e, err))
    off = extents[-1][0] + extents[-1][1]
    if off <= before:
        print("FAIL block status at %d made no progress" % before)
        sys.exit(1)
status_requests = h.stats_chunks_sent() - start

# The extents tile [0, size) (the last may run past a request, not the export).
at = 0
for o, n, flags in extents:
    if o != at or n == 0:
        print("FAIL extents do not tile the export at %d: %r" % (at, [o, n, flags]))
        sys.exit(1)
    at += n
if at < size:
    print("FAIL extents end at %d of %d" % (at, size))
    sys.exit(1)
for o, n, flags in extents:
    if flags & nbd.STATE_ZERO:
        for p in {o, max(o, o + n - 4096)}:
            k = min(4096, o + n - p)
            if h.pread(k, p) != bytes(k):
                print("FAIL range %d+%d reported zero, but %d+%d is not" % (o, n, p, k))
                sys.exit(1)

# The trimmed write at 6 GiB is left out: what a TRIM leaves is unspecified.
hashes = {}
for off, seed in [w for w in writes if w[0] != 6 * G] + [(G, 0), (5 * G, 0)]:
    hashes[str(off)] = hashlib.sha256(h.pread(65536, off)).hexdigest()
print("RESULT " + json.dumps({"extended": ext, "mutations": mutations, "status_requests": status_requests,
                             "hashes": hashes, "extents": extents}))
print("OK")
