# nbdkit's S3 plugin as Debian ships it (nbdkit 1.32), with one change so
# that it runs with objects larger than 64 KiB: the block size it reports.
#
# The plugin reports minimum = preferred = maximum = object-size, and
# nbdkit refuses a minimum above 64 KiB ("plugin must set minimum block
# size between 1 and 64K", the NBD protocol's limit on the minimum block
# size) for every connection, whatever filter sits in front. The plugin's
# code handles any request size and alignment (a partial object is read,
# changed and written back under a per-object lock), so here the minimum
# is 1 and everything else, including preferred = maximum = object-size,
# is the plugin's own. Run as: nbdkit python s3-nbdkit-plugin.py PARAMS...
import importlib.machinery
import importlib.util
import os

# bench/s3.sh sets it from nbdkit --dump-config.
PLUGIN = os.environ.get("NBDKIT_S3_PLUGIN", "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin")

_loader = importlib.machinery.SourceFileLoader("nbdkit_s3_plugin", PLUGIN)
_spec = importlib.util.spec_from_loader("nbdkit_s3_plugin", _loader)
_s3 = importlib.util.module_from_spec(_spec)
_loader.exec_module(_s3)

# nbdkit's python plugin looks its callbacks up in this module.
globals().update({k: v for k, v in vars(_s3).items() if not k.startswith("__")})


def block_size(server):
    _, preferred, maximum = _s3.block_size(server)
    return (1, preferred, maximum)
