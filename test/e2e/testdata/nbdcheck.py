# Helpers shared by the nbdsh scripts (nbdsh puts testdata on sys.path).
import errno
import sys

import nbd


def fail(msg):
    print("FAIL", msg)
    sys.exit(1)


def expect_errno(what, want, fn):
    """Call fn, which must raise nbd.Error with errno want."""
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != want:
            fail("%s: errno %s (%s); want %s" % (what, e.errnum, e, errno.errorcode[want]))
        print("%s: %s" % (what, errno.errorcode[want]))
        return
    fail("%s: succeeded; want %s" % (what, errno.errorcode[want]))


def alive(handle, what, off=8192):
    """Write a block at off and read it back on handle."""
    data = bytes(range(256)) * 16
    handle.pwrite(data, off)
    if handle.pread(len(data), off) != data:
        fail("%s: read back differs" % what)


def complete(handles, reqs):
    """Poll handles until every (handle, cookie) in reqs has completed;
    aio_command_completed raises nbd.Error for a failed command."""
    pending = list(reqs)
    while pending:
        for hh in handles:
            if hh.aio_in_flight() > 0:
                hh.poll(0)
        pending = [(hh, c) for hh, c in pending if not hh.aio_command_completed(c)]
