"""A full copy of one replicated directory, streamed through the replication link.

The copy travels in the same ordered stream as live operations, so the secondary
applies it exactly like them: `reset` (empty the secondary's copy), every entry
top-down (directories, files with their data — holes skipped — symlinks, hard
links, device nodes and FIFOs, owners, modes, xattrs), directory times last, then
a `mark` that tells the secondary its copy is complete.

It runs synchronously in the worker's event loop, so no application operation
interleaves with it: the copy is a consistent snapshot and every later operation
is forwarded after it. The application therefore pauses while the copy streams;
the online, checksummed resynchronization of the next issue lifts that.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Protocol

from mirrorcore.rfs.filters import Filter

CHUNK = 1 << 20

#: The mark a complete full copy ends with.
FULL_SYNC_MARK = 1


class SyncTarget(Protocol):
    """The part of the native Forwarder a full copy uses."""

    def reset(self) -> int: ...
    def put(self, path: bytes, offset: int, data: bytes) -> int: ...
    def create(self, path: bytes, mode: int, uid: int, gid: int) -> int: ...
    def mknod(self, path: bytes, mode: int, rdev: int, uid: int, gid: int) -> int: ...
    def mkdir(self, path: bytes, mode: int, uid: int, gid: int) -> int: ...
    def symlink(self, target: bytes, path: bytes, uid: int, gid: int) -> int: ...
    def link(self, existing: bytes, new: bytes) -> int: ...
    def truncate(self, path: bytes, size: int) -> int: ...
    def chmod(self, path: bytes, mode: int) -> int: ...
    def utimens(self, path: bytes, atime_ns: int, mtime_ns: int) -> int: ...
    def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int) -> int: ...
    def mark(self, tag: int) -> int: ...


@dataclass
class SyncStats:
    """What one full copy sent."""

    entries: int = 0
    files: int = 0
    bytes: int = 0


def full_sync(root_fd: int, target: SyncTarget, filter: Filter) -> SyncStats:
    """Streams the whole replicated tree under `root_fd` to `target`, then the completion mark."""
    stats = SyncStats()
    seen_inodes: dict[tuple[int, int], bytes] = {}
    dirs: list[tuple[bytes, os.stat_result]] = []
    target.reset()
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(b".", dir_fd=root_fd, follow_symlinks=False):
        rel_dir = _relative(dirpath)
        keep = []
        for name in sorted(dirnames):
            rel = _join(rel_dir, name)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                filenames.append(name)  # fwalk lists symlinks to directories as directories
                continue
            if not filter.replicated(rel, is_dir=True):
                continue
            keep.append(name)
            target.mkdir(rel, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            _copy_xattrs(target, rel, name, dir_fd)
            dirs.append((rel, st))
            stats.entries += 1
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = _join(rel_dir, name)
            if not filter.replicated(rel):
                continue
            _copy_entry(target, rel, name, dir_fd, seen_inodes, stats)
            stats.entries += 1
    # Directory times last: creating their children changed them.
    for rel, st in reversed(dirs):
        target.utimens(rel, st.st_atime_ns, st.st_mtime_ns)
    target.mark(FULL_SYNC_MARK)
    return stats


def _copy_entry(
    target: SyncTarget, rel: bytes, name: bytes, dir_fd: int, seen: dict[tuple[int, int], bytes], stats: SyncStats
) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        first = seen.get((st.st_dev, st.st_ino))
        if first is not None:
            target.link(first, rel)
            return
        seen[(st.st_dev, st.st_ino)] = rel
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target.symlink(os.readlink(name, dir_fd=dir_fd), rel, st.st_uid, st.st_gid)
    elif stat.S_ISREG(st.st_mode):
        target.create(rel, mode, st.st_uid, st.st_gid)
        stats.bytes += _copy_data(target, rel, name, dir_fd, st.st_size)
        stats.files += 1
    else:
        target.mknod(rel, st.st_mode, st.st_rdev, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        _copy_xattrs(target, rel, name, dir_fd)
        target.chmod(rel, mode)  # after chown-like creation, so setuid/setgid bits survive
    target.utimens(rel, st.st_atime_ns, st.st_mtime_ns)


def _copy_data(target: SyncTarget, rel: bytes, name: bytes, dir_fd: int, size: int) -> int:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    sent = 0
    try:
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole is left
                raise
            hole = os.lseek(fd, offset, os.SEEK_HOLE)
            while offset < hole:
                data = os.pread(fd, min(CHUNK, hole - offset), offset)
                if not data:
                    break
                target.put(rel, offset, data)
                offset += len(data)
                sent += len(data)
        target.truncate(rel, size)  # a trailing hole, or a file that shrank while we read it
    finally:
        os.close(fd)
    return sent


def _copy_xattrs(target: SyncTarget, rel: bytes, name: bytes, dir_fd: int) -> None:
    path = f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for attr in names:
        value = os.getxattr(path, attr, follow_symlinks=False)
        target.setxattr(rel, attr.encode(), value, 0)


def _relative(dirpath: bytes) -> bytes:
    return b"" if dirpath == b"." else dirpath[2:] if dirpath.startswith(b"./") else dirpath


def _join(parent: bytes, name: bytes) -> bytes:
    return name if not parent else parent + b"/" + name
