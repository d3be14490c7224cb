# Run by nbdsh: four connections to $URI (h plus three more) write their
# own regions concurrently, 16 aio writes in flight on each; each flushes;
# then each reads back the regions another connection wrote, which
# NBD_FLAG_CAN_MULTI_CONN promises it sees after that connection's flush
# (proto.md "NBD_FLAG_CAN_MULTI_CONN"). Prints "OK" on success.
import os
import random

import nbd
from nbdcheck import complete, fail

if not h.can_multi_conn():
    fail("export does not advertise multi-conn")
handles = [h]
for _ in range(3):
    o = nbd.NBD()
    o.connect_uri(os.environ["URI"])
    handles.append(o)

rng = random.Random(5)
size = h.get_size()
region = size // 64
plans = []  # per handle: [(off, data)]
for k, hh in enumerate(handles):
    plan = []
    for j in range(16):
        off = (k * 16 + j) * region + rng.randrange(0, 4096)
        plan.append((off, rng.randbytes(rng.randrange(1, region // 2))))
    plans.append(plan)

complete(handles, [(hh, hh.aio_pwrite(data, off)) for hh, plan in zip(handles, plans) for off, data in plan])
for hh in handles:
    hh.flush()

for k, hh in enumerate(handles):
    for off, data in plans[(k + 1) % len(handles)]:
        if hh.pread(len(data), off) != data:
            fail("connection %d does not see connection %d's write at %d" % (k, (k + 1) % len(handles), off))
for hh in handles[1:]:
    hh.shutdown()
print("OK")
