"""`MirrorFS` handlers of the namespace: lookups, creating, removing, renaming and linking names.

Also the inode bookkeeping those need: names learnt on lookup and creation, forgotten with the
kernel, and the name left to an open file whose known names were all removed (`_relink`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Sequence

import pyfuse3
from pyfuse3 import FUSEError

from mirrorcore.rfs.fuse_core import FuseCore, errors, log, rel_path
from mirrorcore.rfs.inodes import ROOT_INODE, Node

__all__ = ["NameOps"]

_RENAME_EXCHANGE = 2  # linux/fs.h; RENAME_NOREPLACE = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _renameat2(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
    if _libc.renameat2(dir_fd, old, dir_fd, new, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NameOps(FuseCore):
    """lookup, forget, readlink, mknod, mkdir, symlink, unlink, rmdir, rename and link."""

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

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        with errors():
            return os.readlink(rel_path(self._path(inode)), dir_fd=self._root)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        with errors():
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
        with errors():
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
        with errors():
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
        with errors():
            os.unlink(path, dir_fd=self._root)
        self._fwd(path, False, lambda r, p: r.unlink(p))
        self._stamp_parents(path)
        if self.observer is not None:
            self.observer.removed(path)
        self._relink(self.inodes.unlinked(parent_inode, name))
        await self._ack()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._child(parent_inode, name)
        with errors():
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
        with errors():
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
        with errors():
            os.link(existing, new, src_dir_fd=self._root, dst_dir_fd=self._root, follow_symlinks=False)
            st = self._lstat(new)
        self._fwd(new, False, lambda r, p: r.link(existing, p))
        self._stamp_parents(new)
        if self.observer is not None:
            self.observer.linked(existing, new)
        await self._ack()
        return self._attr(st, self.inodes.learn(new_parent_inode, new_name, st).ino)

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
