#!/usr/bin/python3
"""s3open.py: seconds from starting a server to the first byte read from it.

    s3open.py URI OFFSET CMD ARGS...

Starts CMD, connects to URI with libnbd every 5 ms until a connection
succeeds and a 4 KiB read at OFFSET returns, prints the seconds since the
start, then stops CMD with SIGTERM and waits for it. Debian's python3 (python3-libnbd) runs it.
"""

import subprocess
import sys
import time

import nbd

TIMEOUT = 600  # seconds


def first_read(uri, offset, proc, t0):
    while time.monotonic() - t0 < TIMEOUT:
        if proc.poll() is not None:
            sys.exit(f"s3open: server exited with status {proc.returncode} before answering")
        h = nbd.NBD()
        try:
            h.connect_uri(uri)
            h.pread(4096, offset)
            return time.monotonic() - t0
        except nbd.Error:
            time.sleep(0.005)
    sys.exit(f"s3open: no read from {uri} within {TIMEOUT} s")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    uri, offset, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        print(f"{first_read(uri, offset, proc, t0):.3f}")
    finally:
        proc.terminate()
        proc.wait()


main()
