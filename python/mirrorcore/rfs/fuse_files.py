"""`MirrorFS` handlers of open files and directories: open, create, read, write, fallocate, release, fsync, readdir."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
from pyfuse3 import FUSEError

from mirrorcore import _native
from mirrorcore.rfs.fuse_core import DirHandle, FileHandle, FuseCore, errors, rel_path
from mirrorcore.rfs.fuse_durable import INLINE_WAIT, barrier, durable
from mirrorcore.rfs.inodes import Node

__all__ = ["FileOps"]

# Flags of the application's open() that the backing fd must not get (see the docstring of rfs/fuse.py).
_NOT_PASSED = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND | os.O_DIRECT
_SYNC = os.O_SYNC | os.O_DSYNC  # O_SYNC includes the O_DSYNC bit on Linux


class FileOps(FuseCore):
    """open, create, read, write, release, fsync; opendir, readdir, releasedir, fsyncdir."""

    def _opened(self, fd: int, node: Node, flags: int) -> None:
        self._handles[fd] = FileHandle(self.inodes.opened(node.ino), bool(flags & _SYNC))
        self._open_fds.setdefault(node.ino, set()).add(fd)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        path = self.inodes.path(inode)
        with errors():
            where = self._target(inode) if path is None else rel_path(path)  # reopens a nameless file
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
        with errors():
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
                # An fsync likely to follow: the barrier goes with the write, the secondary starts on it now.
                n = guard.write(fh, path, off, buf, post=handle.wrote())
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from e
        if handle.sync or self._ackeach:
            await barrier(self.guard)
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
        with errors():
            os.close(fh)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> int:
        """fallocate(2) through the mount; returns an errno (0: done).

        pyfuse3 has no such handler: the native shim (rust/src/fuse_shim.rs) calls this one
        synchronously, on the FUSE loop's thread, so it must not await. Applied locally, then
        forwarded like a truncate, with the file's new mtime.
        """
        handle = self._handles.get(fh)
        if handle is None:
            return errno.EBADF
        try:
            _native.fallocate(fh, mode, offset, length)
        except OSError as e:
            return e.errno or errno.EIO
        path = self.inodes.path(handle.node.ino)
        self._fwd(path, False, lambda r, p: r.fallocate(p, mode, offset, length))
        self._stamp(path, False)
        if handle.sync or self._ackeach:
            seq = self.guard.post()
            if not self.guard.covered(seq, INLINE_WAIT):
                self.guard.wait(seq)  # blocking the FUSE loop: one round trip, on a rare call
        return 0

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._handles[fh].synced()
        await durable(self.guard, fh, datasync)

    # ----- directories ---------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        with errors():
            fd = os.open(rel_path(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root)
        self._dirs[fd] = DirHandle(self.inodes.opened(inode))
        return fd

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs[fh]
        if start_id == 0 or d.names is None:
            with errors():
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
        with errors():
            os.close(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await durable(self.guard, fh, datasync)
