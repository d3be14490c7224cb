# Run by nbdsh against a file export whose every Sync fails (--fault
# sync:eio): FLUSH must report EIO rather than swallow the error, and the
# connection must survive it. Prints "OK" on success.
import errno

from nbdcheck import alive, expect_errno

h.pwrite(b"x" * 4096, 0)
expect_errno("flush", errno.EIO, h.flush)
alive(h, "after the failed flush")
expect_errno("second flush", errno.EIO, h.flush)
print("OK")
