"""The FUSE file system mounted over a replicated directory: apply locally, then forward.

`MirrorFS` serves the pyfuse3 low-level API over a directory fd opened before mounting
(`root_fd`): every local operation is an `*at()` call relative to it, or uses an fd it
opened. For each mutation the replicator is called right after the local operation succeeded,
with no `await` in between, so the order of forwarding is the order of local application.
Writes go through `Replicator.write`, which does the pwrite itself (the hot path is native).

Durability points (the replication barrier, waited for in a thread while the local fsync runs inline;
no thread at all when the barrier cannot block: no replicator, or no live link): fsync, fdatasync and
fsyncdir; every write on an fd opened O_SYNC/O_DSYNC; every mutation when `ackeach`.

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
security.capability before every write is answered from a per-node cache of absent names; no `fallocate`, `lseek` or
`copy_file_range` handlers exist in pyfuse3 3.5, so fallocate(2) fails with EOPNOTSUPP
(posix_fallocate falls back to writing zeros, which is forwarded), SEEK_HOLE/SEEK_DATA on the
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
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyfuse3
import trio
from pyfuse3 import FUSEError

from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.inodes import ROOT_INODE, InodeTable, Node
from mirrorcore.rfs.pending import NamespaceObserver
from mirrorcore.rfs.replicator import Guard, Replicator

if TYPE_CHECKING:
    import outcome

__all__ = ["MOUNT_OPTIONS", "MirrorFS"]

log = logging.getLogger(__name__)

MOUNT_OPTIONS = frozenset({"allow_other", "default_permissions", "fsname=mirrorcore", "subtype=mirrorcore"})

# Flags of the application's open() that the backing fd must not get (see the module docstring).
_NOT_PASSED = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND | os.O_DIRECT
_SYNC = os.O_SYNC | os.O_DSYNC  # O_SYNC includes the O_DSYNC bit on Linux
_RENAME_EXCHANGE = 2  # linux/fs.h; RENAME_NOREPLACE = 1

# Seconds the kernel may trust a name or attributes we handed it. Every change goes through us and
# the kernel drops what our own operations invalidate (a directory's attributes after a create in
# it, a file's after a write), so a long timeout is safe; a short one only makes the kernel ask
# again (a LOOKUP before unlinking a file created more than that ago, a GETATTR before a permission
# check). Only what the backing file system changes on its own (atime on reads) may show late.
ATTR_TIMEOUT = 300.0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _renameat2(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
    if _libc.renameat2(dir_fd, old, dir_fd, new, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def _errors() -> Iterator[None]:
    """The boundary: an OSError of a local operation becomes the application's errno."""
    try:
        yield
    except OSError as e:
        raise FUSEError(e.errno or errno.EIO) from e


def _rel(path: bytes) -> bytes:
    return path or b"."


def _start_in_thread(fn: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """Starts `fn` in one of trio's cached threads; returns what awaits its end (call it exactly once).

    `trio.to_thread.run_sync` costs about twice as much per call (capacity limiter, context copy,
    cancellation plumbing); durability points wait this way, uncancellably, as to_thread would.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[object]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)

    async def wait() -> None:
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    return wait


async def _in_thread(fn: Callable[[], object]) -> None:
    """Runs `fn` in a thread and waits for it (its exception propagates)."""
    await _start_in_thread(fn)()


@dataclass
class _Handle:
    node: Node
    sync: bool  # opened O_SYNC/O_DSYNC: every write is a durability point


@dataclass
class _Dir:
    node: Node
    names: list[bytes] | None = None  # snapshot taken at offset 0: offsets are indexes in it


class MirrorFS(pyfuse3.Operations):
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
        super().__init__()
        self._root = root_fd
        self.filter = filter
        self.guard = Guard(replicator, on_lost)
        self._ackeach = ackeach  # applies whenever a replicator is attached (it may come later)
        self._timeout = timeout
        self.inodes = InodeTable(os.fstat(root_fd))
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, _Dir] = {}
        self._open_fds: dict[int, set[int]] = {}  # inode -> fds, for nameless (unlinked) files
        # A resync under way follows the application's renames, unlinks and links (told right after forwarding).
        self.observer: NamespaceObserver | None = None

    @property
    def root_fd(self) -> int:
        """The replicated directory underneath the mount."""
        return self._root

    # ----- helpers -------------------------------------------------------------------------

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
        return os.stat(_rel(path), dir_fd=self._root, follow_symlinks=False)

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

    def _xattr_target(self, ino: int) -> tuple[int | bytes, bool]:
        """(target, follow_symlinks) for the xattr calls: an fd when there is no name to use."""
        path = self.inodes.path(ino)
        if path:
            return b"/proc/self/fd/%d/%s" % (self._root, path), False
        if path is not None:
            return self._root, True
        fds = self._open_fds.get(ino)
        if not fds:
            raise FUSEError(errno.ENOENT)
        return next(iter(fds)), True

    def _stat_ino(self, ino: int) -> os.stat_result:
        path = self.inodes.path(ino)
        if path is not None:
            return self._lstat(path)
        fds = self._open_fds.get(ino)
        if not fds:
            raise FUSEError(errno.ENOENT)
        return os.fstat(next(iter(fds)))

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
            await self._barrier()

    async def _barrier(self) -> None:
        """Waits for the replication barrier: in a thread, unless it cannot block."""
        guard = self.guard
        if guard.may_block():
            await _in_thread(guard.barrier)
        else:
            guard.barrier()

    async def _durable(self, fd: int, datasync: bool) -> None:
        """Local fsync and the replication barrier, in parallel.

        The barrier waits in a thread (if it may block at all) while the local fsync runs inline:
        one thread hop at most. Thread hops cost more than a fast fsync on this kind of machine,
        and other requests only wait for the length of one fsync.
        """
        guard = self.guard
        barrier = _start_in_thread(guard.barrier) if guard.may_block() else None
        try:
            (os.fdatasync if datasync else os.fsync)(fd)
        except OSError as e:
            failed: OSError | None = e
        else:
            failed = None
        if barrier is not None:
            await barrier()
        else:
            guard.barrier()  # a no-op, or returns at once (no link to wait for)
        if failed is not None:
            raise FUSEError(failed.errno or errno.EIO) from failed

    def _owner(self, parent_path: bytes, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        parent = self._lstat(parent_path)
        gid = parent.st_gid if parent.st_mode & stat.S_ISGID else ctx.gid
        return ctx.uid, gid

    def _check_crossing(self, old: bytes, new: bytes, st: os.stat_result) -> None:
        is_dir = stat.S_ISDIR(st.st_mode)
        below: list[bytes] = []
        if is_dir and self.filter.has_regex:
            below = self._descendants(old)
        if self.filter.crosses_boundary(old, new, is_dir=is_dir, descendants=below):
            raise FUSEError(errno.EXDEV)

    def _descendants(self, path: bytes) -> list[bytes]:
        out: list[bytes] = []
        prefix = len(path) + 1
        for top, dirs, files, _ in os.fwalk(path, dir_fd=self._root):
            out.extend((top + b"/" + n)[prefix:] for n in (*dirs, *files))
        return out

    def _relink(self, node: Node | None) -> None:
        """After losing its last known name, an open file may still have a name we never learnt.

        Rare (hard links opened by one name, that name then removed): walk the tree to find it,
        so that its writes keep being forwarded under the name still visible.
        """
        if node is None or node.links or not node.opens:
            return
        fds = self._open_fds.get(node.ino)
        try:
            if not fds or os.fstat(next(iter(fds))).st_nlink == 0:
                return
            for top, _, files, dfd in os.fwalk(b".", dir_fd=self._root):
                for name in files:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == node.key:
                        self._attach(os.path.normpath(top + b"/" + name))
                        return
        except OSError as e:  # the operation itself succeeded: do not fail it for this
            log.warning("could not find the remaining name of an open hard-linked file: %s", e)

    def _attach(self, path: bytes) -> None:
        parent = ROOT_INODE
        walked = b""
        for part in path.split(b"/"):
            walked = walked + b"/" + part if walked else part
            parent = self.inodes.learn(parent, part, self._lstat(walked), lookup=False).ino

    # ----- lookups and attributes ----------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            st = os.stat(path or b".", dir_fd=self._root, follow_symlinks=False)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from e
        return self._attr(st, self.inodes.learn(parent_inode, name, st).ino)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, nlookup in inode_list:
            self.inodes.forget(ino, nlookup)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            st = self._stat_ino(inode)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from e
        return self._attr(st, inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        path = self.inodes.path(inode)
        fd = fh if fh is not None and fh in self._handles else None
        if fd is None and path is None:
            fds = self._open_fds.get(inode)
            fd = next(iter(fds)) if fds else None
        on: int | bytes = fd if fd is not None else self._target(inode)
        rel = _rel(path) if path is not None else None
        dir_ = node.is_dir
        with _errors():
            if fields.update_size:
                size = attr.st_size
                if isinstance(on, int):
                    os.ftruncate(on, size)
                else:
                    os.truncate(on, size)
                self._fwd(path, dir_, lambda r, p: r.truncate(p, size))
                self._stamp(path, dir_)
            if fields.update_mode:
                mode = stat.S_IMODE(attr.st_mode)
                if rel is not None and fd is None:
                    os.chmod(rel, mode, dir_fd=self._root)
                else:
                    os.chmod(on, mode)
                self._fwd(path, dir_, lambda r, p: r.chmod(p, mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                before = self._stat_ino(inode).st_mode
                if rel is not None and fd is None:
                    os.chown(rel, uid, gid, dir_fd=self._root, follow_symlinks=False)
                else:
                    os.chown(on, uid, gid)
                self._fwd(path, dir_, lambda r, p: r.chown(p, uid, gid))
                after = self._stat_ino(inode).st_mode
                if after != before:  # chown cleared set-user/group-ID bits: make it explicit
                    self._fwd(path, dir_, lambda r, p: r.chmod(p, stat.S_IMODE(after)))
            if fields.update_atime or fields.update_mtime:
                old = self._stat_ino(inode)
                ns = (
                    attr.st_atime_ns if fields.update_atime else old.st_atime_ns,
                    attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns,
                )
                if rel is not None and fd is None:
                    os.utime(rel, ns=ns, dir_fd=self._root, follow_symlinks=False)
                else:
                    os.utime(on, ns=ns)
                new = self._stat_ino(inode)  # UTIME_NOW was resolved by pyfuse3: forward exact ns
                self._fwd(path, dir_, lambda r, p: r.utimens(p, new.st_atime_ns, new.st_mtime_ns))
            st = self._stat_ino(inode)
        await self._ack()
        return self._attr(st, inode)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        with _errors():
            return os.readlink(_rel(self._path(inode)), dir_fd=self._root)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with _errors():
            sv = os.statvfs(self._root)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, name, getattr(sv, name))
        out.f_namemax = sv.f_namemax
        return out

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks before asking us anything

    # ----- namespace -----------------------------------------------------------------------

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        with _errors():
            uid, gid = self._owner(self.inodes.path(parent_inode) or b"", ctx)
            os.mknod(path, mode & ~ctx.umask, rdev, dir_fd=self._root)
            os.chown(path, uid, gid, dir_fd=self._root, follow_symlinks=False)
            st = self._lstat(path)
        self._fwd(path, False, lambda r, p: r.mknod(p, st.st_mode, rdev, st.st_uid, st.st_gid))
        self._stamp(path, False, st)
        self._stamp_parents(path)
        await self._ack()
        return self._attr(st, self.inodes.learn(parent_inode, name, st).ino)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        with _errors():
            uid, gid = self._owner(self.inodes.path(parent_inode) or b"", ctx)
            os.mkdir(path, mode & ~ctx.umask & 0o7777, dir_fd=self._root)
            os.chown(path, uid, gid, dir_fd=self._root, follow_symlinks=False)
            st = self._lstat(path)
        self._fwd(path, True, lambda r, p: r.mkdir(p, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        self._stamp(path, True, st)
        self._stamp_parents(path)
        await self._ack()
        return self._attr(st, self.inodes.learn(parent_inode, name, st).ino)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        with _errors():
            uid, gid = self._owner(self.inodes.path(parent_inode) or b"", ctx)
            os.symlink(target, path, dir_fd=self._root)
            os.chown(path, uid, gid, dir_fd=self._root, follow_symlinks=False)
            st = self._lstat(path)
        self._fwd(path, False, lambda r, p: r.symlink(target, p, st.st_uid, st.st_gid))
        self._stamp(path, False, st)
        self._stamp_parents(path)
        await self._ack()
        return self._attr(st, self.inodes.learn(parent_inode, name, st).ino)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        with _errors():
            os.unlink(path, dir_fd=self._root)
        self._fwd(path, False, lambda r, p: r.unlink(p))
        self._stamp_parents(path)
        if self.observer is not None:
            self.observer.removed(path)
        self._relink(self.inodes.unlinked(parent_inode, name))
        await self._ack()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        with _errors():
            os.rmdir(path, dir_fd=self._root)
        self._fwd(path, True, lambda r, p: r.rmdir(p))
        self._stamp_parents(path)
        if self.observer is not None:
            self.observer.removed(path)
        self.inodes.unlinked(parent_inode, name)
        await self._ack()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        with _errors():
            st_old = self._lstat(old)
            self._check_crossing(old, new, st_old)
            try:
                st_new: os.stat_result | None = self._lstat(new)
            except FileNotFoundError:
                st_new = None
            if st_new is not None and flags & _RENAME_EXCHANGE:
                self._check_crossing(new, old, st_new)
            if flags:
                _renameat2(self._root, old, new, flags)
            else:
                os.rename(old, new, src_dir_fd=self._root, dst_dir_fd=self._root)
        self._fwd(old, stat.S_ISDIR(st_old.st_mode), lambda r, p: r.rename(p, new, flags))
        self._stamp_parents(old, new)
        if old.rpartition(b"/")[0] != new.rpartition(b"/")[0]:
            if stat.S_ISDIR(st_old.st_mode):
                self._stamp(new, True)
            if flags & _RENAME_EXCHANGE and st_new is not None and stat.S_ISDIR(st_new.st_mode):
                self._stamp(old, True)
        same = st_new is not None and (st_new.st_dev, st_new.st_ino) == (st_old.st_dev, st_old.st_ino)
        if not same:  # renaming a hard link onto another link of the same file does nothing
            exchange = bool(flags & _RENAME_EXCHANGE)
            replaced = self.inodes.child(parent_inode_new, name_new)
            self.inodes.renamed((parent_inode_old, name_old), (parent_inode_new, name_new), exchange=exchange)
            if not exchange:
                self._relink(replaced)
            if self.observer is not None:
                self.observer.renamed(old, new, exchange=exchange)
        await self._ack()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        existing = self._path(inode)
        new = self._child(new_parent_inode, new_name)
        if self.filter.replicated(existing) != self.filter.replicated(new):
            raise FUSEError(errno.EXDEV)
        with _errors():
            os.link(existing, new, src_dir_fd=self._root, dst_dir_fd=self._root, follow_symlinks=False)
            st = self._lstat(new)
        self._fwd(new, False, lambda r, p: r.link(existing, p))
        self._stamp_parents(new)
        if self.observer is not None:
            self.observer.linked(existing, new)
        await self._ack()
        return self._attr(st, self.inodes.learn(new_parent_inode, new_name, st).ino)

    # ----- files ---------------------------------------------------------------------------

    def _opened(self, fd: int, node: Node, flags: int) -> None:
        self._handles[fd] = _Handle(self.inodes.opened(node.ino), bool(flags & _SYNC))
        self._open_fds.setdefault(node.ino, set()).add(fd)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        path = self.inodes.path(inode)
        with _errors():
            where = self._target(inode) if path is None else _rel(path)  # reopens a nameless file
            fd = os.open(where, (flags & ~_NOT_PASSED) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root)
            try:
                if flags & os.O_TRUNC:
                    os.ftruncate(fd, 0)
            except OSError:
                os.close(fd)
                raise
        self._opened(fd, node, flags)
        if flags & os.O_TRUNC:
            self._fwd(path, False, lambda r, p: r.truncate(p, 0))
            self._stamp(path, False)
            await self._ack()
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        oflags = (flags & ~_NOT_PASSED) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with _errors():
            uid, gid = self._owner(self.inodes.path(parent_inode) or b"", ctx)
            fd = os.open(path, oflags, mode & ~ctx.umask & 0o7777, dir_fd=self._root)
            try:
                os.fchown(fd, uid, gid)
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                os.unlink(path, dir_fd=self._root)
                raise
        self._fwd(path, False, lambda r, p: r.create(p, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        self._stamp(path, False, st)
        self._stamp_parents(path)
        node = self.inodes.learn(parent_inode, name, st)
        self._opened(fd, node, flags)
        await self._ack()
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._attr(st, node.ino)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from e

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        guard = self.guard
        try:
            if guard.replicator is None:  # passthrough (or ALONE without tracking): the hot path
                return os.pwrite(fh, buf, off)
            path = self.inodes.path(handle.node.ino)
            if path is not None and not self.filter.replicated(path):
                n = os.pwrite(fh, buf, off)
            else:
                n = guard.write(fh, path, off, buf)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from e
        if handle.sync or self._ackeach:
            await self._barrier()
        return n

    # No flush handler: close() is not a durability point (writes were applied when they arrived),
    # and the ENOSYS of pyfuse3's default tells the kernel to stop sending FLUSH at every close.

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        fds = self._open_fds[handle.node.ino]
        fds.discard(fh)
        if not fds:
            del self._open_fds[handle.node.ino]
        self.inodes.closed(handle.node)
        with _errors():
            os.close(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._durable(fh, datasync)

    # ----- directories ---------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        with _errors():
            fd = os.open(_rel(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root)
        self._dirs[fd] = _Dir(self.inodes.opened(inode))
        return fd

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs[fh]
        if start_id == 0 or d.names is None:
            with _errors():
                d.names = [os.fsencode(n) for n in os.listdir(fh)]
        for i in range(start_id, len(d.names)):
            name = d.names[i]
            try:
                st = os.stat(name, dir_fd=fh, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the snapshot
            except OSError as e:
                raise FUSEError(e.errno or errno.EIO) from e
            node = self.inodes.learn(d.node.ino, name, st)
            if not pyfuse3.readdir_reply(token, name, self._attr(st, node.ino), i + 1):
                self.inodes.forget(node.ino, 1)  # the kernel did not take this entry
                return

    async def releasedir(self, fh: int) -> None:
        d = self._dirs.pop(fh)
        self.inodes.closed(d.node)
        with _errors():
            os.close(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._durable(fh, datasync)

    # ----- extended attributes -------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # The kernel asks for security.capability before every write (file_remove_privs): answer an
        # absent name from the node's cache, with no syscall.
        node = self.inodes.get(inode)
        if name in node.no_xattrs:
            raise FUSEError(errno.ENODATA)
        target, follow = self._xattr_target(inode)
        try:
            return os.getxattr(target, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.ENODATA:
                node.no_xattrs.add(name)
            raise FUSEError(e.errno or errno.EIO) from e

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        target, follow = self._xattr_target(inode)
        with _errors():
            return [os.fsencode(n) for n in os.listxattr(target, follow_symlinks=follow)]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        # pyfuse3 checks XATTR_CREATE/XATTR_REPLACE itself (with getxattr) and drops the flag.
        node = self.inodes.get(inode)
        node.no_xattrs.clear()
        target, follow = self._xattr_target(inode)
        with _errors():
            os.setxattr(target, name, value, 0, follow_symlinks=follow)
        self._fwd(self.inodes.path(inode), node.is_dir, lambda r, p: r.setxattr(p, name, value, 0))
        await self._ack()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.get(inode)
        node.no_xattrs.clear()
        target, follow = self._xattr_target(inode)
        with _errors():
            os.removexattr(target, name, follow_symlinks=follow)
        self._fwd(self.inodes.path(inode), node.is_dir, lambda r, p: r.removexattr(p, name))
        await self._ack()
