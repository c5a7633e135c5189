"""`MirrorFS` handlers of attributes: getattr, setattr, statfs, access and extended attributes."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
from pyfuse3 import FUSEError

from mirrorcore.rfs.fuse_core import FuseCore, errors, rel_path

__all__ = ["AttrOps"]


class AttrOps(FuseCore):
    """getattr, setattr, statfs, access, getxattr, listxattr, setxattr and removexattr."""

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
        rel = rel_path(path) if path is not None else None
        dir_ = node.is_dir
        with errors():
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

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with errors():
            sv = os.statvfs(self._root)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, name, getattr(sv, name))
        out.f_namemax = sv.f_namemax
        return out

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # default_permissions: the kernel checks before asking us anything

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
        with errors():
            return [os.fsencode(n) for n in os.listxattr(target, follow_symlinks=follow)]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        # pyfuse3 checks XATTR_CREATE/XATTR_REPLACE itself (with getxattr) and drops the flag.
        node = self.inodes.get(inode)
        node.no_xattrs.clear()
        target, follow = self._xattr_target(inode)
        with errors():
            os.setxattr(target, name, value, 0, follow_symlinks=follow)
        self._fwd(self.inodes.path(inode), node.is_dir, lambda r, p: r.setxattr(p, name, value, 0))
        await self._ack()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.inodes.get(inode)
        node.no_xattrs.clear()
        target, follow = self._xattr_target(inode)
        with errors():
            os.removexattr(target, name, follow_symlinks=follow)
        self._fwd(self.inodes.path(inode), node.is_dir, lambda r, p: r.removexattr(p, name))
        await self._ack()
