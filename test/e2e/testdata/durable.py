# Run by nbdsh. MODE=write: write a flushed region and a FUA region (not
# flushed), print "READY" and wait, still connected, to be killed: the test
# SIGKILLs nbdd first, so no disconnect-time flush can help. MODE=verify:
# read both regions back and compare. The data comes from $SEED. Prints
# "OK" on success.
import os
import random
import sys

import nbd

rng = random.Random(int(os.environ["SEED"]))
flushed = (12345, rng.randbytes(1 << 20))
fua = (3 << 20 | 7, rng.randbytes(64 << 10))

if os.environ["MODE"] == "write":
    h.pwrite(flushed[1], flushed[0])
    h.flush()
    if not h.can_fua():
        print("FAIL export does not advertise FUA")
        sys.exit(1)
    h.pwrite(fua[1], fua[0], nbd.CMD_FLAG_FUA)
    print("READY", flush=True)
    sys.stdin.read()  # until the test kills us
    sys.exit(0)

for what, (off, data) in (("flushed", flushed), ("FUA", fua)):
    got = h.pread(len(data), off)
    if got != data:
        i = next(i for i in range(len(data)) if got[i] != data[i])
        print("FAIL %s write at %d lost: byte %d differs" % (what, off, off + i))
        sys.exit(1)
print("OK")
