"""What every `MirrorFS` handler shares: its state, paths under the root fd, forwarding and mtime stamps.

The handlers are mixins over `FuseCore` (fuse_names, fuse_files, fuse_attrs), composed into
`MirrorFS` in rfs/fuse.py, whose docstring describes what they do and why.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyfuse3
from pyfuse3 import FUSEError

from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.fuse_durable import barrier
from mirrorcore.rfs.inodes import InodeTable, Node
from mirrorcore.rfs.pending import NamespaceObserver
from mirrorcore.rfs.replicator import Guard, Replicator

__all__ = ["ATTR_TIMEOUT", "DirHandle", "FileHandle", "FuseCore", "errors", "log", "rel_path"]

# The name log lines carried when all of MirrorFS lived in rfs/fuse.py (the log format shows it).
log = logging.getLogger("mirrorcore.rfs.fuse")

# Seconds the kernel may trust a name or attributes we handed it. Every change goes through us and
# the kernel drops what our own operations invalidate (a directory's attributes after a create in
# it, a file's after a write), so a long timeout is safe; a short one only makes the kernel ask
# again (a LOOKUP before unlinking a file created more than that ago, a GETATTR before a permission
# check). Only what the backing file system changes on its own (atime on reads) may show late.
ATTR_TIMEOUT = 300.0


@contextmanager
def errors() -> Iterator[None]:
    """The boundary: an OSError of a local operation becomes the application's errno."""
    try:
        yield
    except OSError as e:
        raise FUSEError(e.errno or errno.EIO) from e


def rel_path(path: bytes) -> bytes:
    return path or b"."


@dataclass
class FileHandle:
    node: Node
    sync: bool  # opened O_SYNC/O_DSYNC: every write is a durability point
    writes: int = 0  # writes since this handle's last fsync
    gap: int = 0  # writes between its last two fsyncs (0: none seen yet)

    def wrote(self) -> bool:
        """Counts a write; whether an fsync is likely to follow now (it did after as many writes last time).

        Then the write's barrier is posted at once, so that the secondary applies and flushes it
        while the application is still on its way to the fsync (a database's write + fsync).
        """
        self.writes += 1
        return 0 < self.gap <= self.writes

    def synced(self) -> None:
        """Counts an fsync of this handle."""
        if self.writes:
            self.gap = self.writes
        self.writes = 0


@dataclass
class DirHandle:
    node: Node
    names: list[bytes] | None = None  # snapshot taken at offset 0: offsets are indexes in it


class FuseCore(pyfuse3.Operations):
    """The state and helpers of `MirrorFS`, whose handlers are the mixins subclassing this."""

    def __init__(
        self,
        root_fd: int,
        replicator: Replicator | None,
        filter: Filter,
        *,
        ackeach: bool = False,
        on_lost: Callable[[BaseException], None] | None = None,
        timeout: float = ATTR_TIMEOUT,
    ) -> None:
        """Arguments as documented on `MirrorFS`."""
        super().__init__()
        self._root = root_fd
        self.filter = filter
        self.guard = Guard(replicator, on_lost)
        self._ackeach = ackeach  # applies whenever a replicator is attached (it may come later)
        self._timeout = timeout
        self.inodes = InodeTable(os.fstat(root_fd))
        self._handles: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._open_fds: dict[int, set[int]] = {}  # inode -> fds, for nameless (unlinked) files
        # A resync under way follows the application's renames, unlinks and links (told right after forwarding).
        self.observer: NamespaceObserver | None = None

    @property
    def root_fd(self) -> int:
        """The replicated directory underneath the mount."""
        return self._root

    def _attr(self, st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self._timeout
        e.attr_timeout = self._timeout
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _lstat(self, path: bytes) -> os.stat_result:
        return os.stat(rel_path(path), dir_fd=self._root, follow_symlinks=False)

    def _path(self, ino: int) -> bytes:
        """The inode's path; ENOENT when it has none left (use `_target` for nameless files)."""
        path = self.inodes.path(ino)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def _child(self, parent: int, name: bytes) -> bytes:
        path = self.inodes.child_path(parent, name)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def _target(self, ino: int) -> bytes:
        """A path that reaches the backing inode from anywhere, for calls that take no dir_fd.

        /proc/self/fd/N is a magic link to what fd N is open on: under the root fd it reaches the
        covered directory, and for a nameless (unlinked) file it reaches one of its open fds.
        """
        path = self.inodes.path(ino)
        if path is None:
            fds = self._open_fds.get(ino)
            if not fds:
                raise FUSEError(errno.ENOENT)
            return b"/proc/self/fd/%d" % next(iter(fds))
        return b"/proc/self/fd/%d/%s" % (self._root, path) if path else b"/proc/self/fd/%d" % self._root

    def _fwd(self, path: bytes | None, is_dir: bool, op: Callable[[Replicator, bytes], object]) -> None:
        """Forwards `op` for `path` if it is replicated; call right after the local operation."""
        if path is not None and self.guard.replicator is not None and self.filter.replicated(path, is_dir=is_dir):
            self.guard.call(lambda r: op(r, path))

    def _stamp(self, path: bytes | None, is_dir: bool, st: os.stat_result | None = None) -> None:
        """Forwards `path`'s mtime as the primary has it now (`st` if the caller just took it).

        Call right after forwarding the operation that changed it, with no `await` in between: the
        time read is that operation's result, and the secondary sets it after applying the operation.
        """
        if not path or self.guard.replicator is None or not self.filter.replicated(path, is_dir=is_dir):
            return  # nameless, the root (whose own times are not replicated), passthrough or not replicated
        if st is None:
            try:
                st = self._lstat(path)
            except OSError as e:  # the operation itself succeeded: do not fail it for this
                log.warning("could not read the mtime of %r to replicate it: %s", path, e)
                return
        mtime_ns = st.st_mtime_ns
        self.guard.call(lambda r: r.utimens(path, None, mtime_ns))

    def _stamp_parents(self, *paths: bytes) -> None:
        """Forwards the mtime of the directories holding `paths`, each once (see `_stamp`)."""
        for parent in dict.fromkeys(path.rpartition(b"/")[0] for path in paths):
            self._stamp(parent, True)

    async def _ack(self) -> None:
        """With ackeach, every mutation waits for the secondary (a durability point)."""
        if self._ackeach:
            await barrier(self.guard)

    def _owner(self, parent_path: bytes, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        parent = self._lstat(parent_path)
        gid = parent.st_gid if parent.st_mode & stat.S_ISGID else ctx.gid
        return ctx.uid, gid
