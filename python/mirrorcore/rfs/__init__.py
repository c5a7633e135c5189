"""Replication of files (rfs): the FUSE interception layer on the primary (SPEC §6).

`worker.serve` mounts `MirrorFS` over a replicated directory; every mutation is applied
locally and handed to a `Replicator` (the native Forwarder), filtered by `Filter`.
"""

from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.fuse import MOUNT_OPTIONS, MirrorFS
from mirrorcore.rfs.replicator import Guard, Replicator

# worker (serve, recover_stale_mount) is not imported here: it runs as `python -m mirrorcore.rfs.worker`,
# and runpy warns when the package has already imported the module it is asked to run.

__all__ = ["MOUNT_OPTIONS", "Filter", "Guard", "MirrorFS", "Replicator"]
