"""The FUSE file system mounted over a replicated directory: apply locally, then forward.

`MirrorFS` serves the pyfuse3 low-level API over a directory fd opened before mounting
(`root_fd`): every local operation is an `*at()` call relative to it, or uses an fd it
opened. For each mutation the replicator is called right after the local operation succeeded,
with no `await` in between, so the order of forwarding is the order of local application.
Writes go through `Replicator.write`, which does the pwrite itself (the hot path is native).

Durability points (see rfs/fuse_durable.py: the barrier is queued before the local fsync, which
runs inline, and its acknowledgement waited for inline briefly, then in a thread): fsync, fdatasync
and fsyncdir; every write on an fd opened O_SYNC/O_DSYNC; every mutation when `ackeach`. A write on
a handle whose fsyncs came after as many writes as it has now queues its barrier with it
(`FileHandle.wrote`), so the secondary applies and flushes it while the fsync is still on its way.

Modification times: the secondary must end with the primary's st_mtime_ns on every replicated entry,
but applying an operation there stamps its own clock. Writes (the hot path) carry the file's mtime
in their frame: the native `write` reads it with fstat right after its pwrite, and the secondary sets
it after its own (no extra frame; one fstat here, one futimens there). For every other operation
that changes an mtime, right after forwarding it (still no `await`), we read the resulting times
and forward them as `utimens(path, None, mtime_ns)` (None: the secondary keeps its atime):
  - truncate (setattr, open O_TRUNC): the file;
  - create, mknod, mkdir, symlink: the new entry and its parent directory;
  - link, unlink, rmdir: the parent directory;
  - rename: both parent directories (one if the same), and a directory moved to another parent
    (some file systems stamp it when they rewrite its "..").
A parent is stamped even when the child is not replicated (its mtime changed all the same), unless
the parent itself is not replicated or is the root (the root's own times are not replicated).
Cost outside the write path: one lstat and one extra frame per stamped entry (1 to 3 per operation).
chmod/chown/xattrs change only ctime, which nothing can set: nothing to forward.

Kernel side: no writeback cache (the daemon sees every write, in order); `default_permissions`
(the kernel checks permissions, so `access` is never asked); no `flush` handler (close() is not a
durability point: the kernel stops sending FLUSH after the first ENOSYS); the kernel's GETXATTR of
security.capability before every write is answered from a per-node cache of absent names. pyfuse3 3.5 has no
`fallocate`, `lseek` or `copy_file_range` handlers: fallocate(2) is served all the same, by a
handler the native shim adds to pyfuse3's FUSE session (rust/src/fuse_shim.rs, `FileOps.fallocate`;
the kernel passes modes 0, KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE), SEEK_HOLE/SEEK_DATA on the
mount see the file as all data (holes are kept on both sides, st_blocks is passed through) and
copy_file_range falls back to read + write.

Local semantics, with the daemon running as root and umask 0 (see worker.serve):
- new entries get mode & ~umask of the caller and the caller's uid/gid (the directory's gid in a
  set-group-ID directory); the forwarded create/mkdir/mknod/symlink carry the resulting values.
- O_APPEND and O_DIRECT are not passed to the backing fd: the kernel computes the append
  offset itself (from the size it knows, exact since every write goes through here), and a
  dirty mmap page may be written back through any writable handle of the file, which must not
  append. O_TRUNC truncates locally and forwards a truncate.
- a file unlinked (or renamed over) while open keeps its handles; its writes go to the
  replicator with path None (nothing visible to replicate).

Layout: `MirrorFS` (here) is composed of mixins over `fuse_core.FuseCore` (state, paths under the
root fd, forwarding and mtime stamps): `fuse_names.NameOps` (lookups and the namespace),
`fuse_files.FileOps` (open files and directories), `fuse_attrs.AttrOps` (attributes and xattrs);
`fuse_durable` waits for the replication barrier at durability points.
"""

from __future__ import annotations

from mirrorcore.rfs.fuse_attrs import AttrOps
from mirrorcore.rfs.fuse_core import ATTR_TIMEOUT as ATTR_TIMEOUT
from mirrorcore.rfs.fuse_files import FileOps
from mirrorcore.rfs.fuse_names import NameOps

__all__ = ["MOUNT_OPTIONS", "MirrorFS"]

MOUNT_OPTIONS = frozenset({"allow_other", "default_permissions", "fsname=mirrorcore", "subtype=mirrorcore"})


class MirrorFS(NameOps, FileOps, AttrOps):
    """pyfuse3 operations over `root_fd`, forwarding mutations to `replicator`.

    Args:
        root_fd: the replicated directory, opened before the mount covered it.
        replicator: the forwarder, or None for a plain passthrough.
        filter: what is replicated (notreplicated paths/regexes).
        ackeach: every mutation is a durability point.
        on_lost: called when the replicator reports the secondary lost (see replicator.Guard).
        timeout: seconds the kernel may cache entries and attributes (every change goes through
            us, so caching is safe; see `ATTR_TIMEOUT`).
    """

    enable_writeback_cache = False
    supports_dot_lookup = False
    enable_acl = False
