"""Replication of files (rfs): the FUSE interception layer on the primary (SPEC §6).

`worker.serve` mounts `MirrorFS` over a replicated directory; every mutation is applied
locally and handed to a `Replicator` (the native Forwarder), filtered by `Filter`.
"""

from mirrorcore import _native

# Before anything here imports pyfuse3: its FUSE session then gets the fallocate handler pyfuse3
# lacks (rust/src/fuse_shim.rs; MirrorFS.fallocate serves it). Should this fail, fallocate(2) on
# the mount stays unsupported (EOPNOTSUPP) and nothing else changes.
_native.fuse_shim_enable()

from mirrorcore.rfs.filters import Filter  # noqa: E402 (pyfuse3 must load after the call above)
from mirrorcore.rfs.fuse import MOUNT_OPTIONS, MirrorFS  # noqa: E402
from mirrorcore.rfs.replicator import Guard, Replicator  # noqa: E402

# worker (serve, recover_stale_mount) is not imported here: it runs as `python -m mirrorcore.rfs.worker`,
# and runpy warns when the package has already imported the module it is asked to run.

__all__ = ["MOUNT_OPTIONS", "Filter", "Guard", "MirrorFS", "Replicator"]
