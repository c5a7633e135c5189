"""The namespace step of a resync: make the secondary's tree hold exactly the primary's entries.

One walk of the primary's tree (metadata only, no data), top-down: per directory a `prune`
(the secondary removes every name the primary does not have), then an `ensure` per entry (kind,
mode, owner, xattrs, symlink target, device number; for a regular file also its size and mtime,
which the secondary's quick check compares), an `ensure_link` for every further name of a
hard-linked file, and directory times last, children before parents (creating entries changed
them). It runs with no `await` (see resync.py): no application operation falls inside it, and
every later one is forwarded after it.

Every regular file is registered in `Pending` with its inode and names, so the content phase can
follow it through the application's renames.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Protocol

from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.pending import Item, Key, Pending

__all__ = [
    "NamespaceStats",
    "NamespaceTarget",
    "ensure_entry",
    "join",
    "relative",
    "replicated_entries",
    "sync_namespace",
]

#: The xattr namespaces that are replicated (as the FUSE layer forwards them).
_XATTR_PREFIXES = (b"user.", b"trusted.")


class NamespaceTarget(Protocol):
    """The one-way resync operations of the native Forwarder the namespace step uses."""

    def prune(self, dir: bytes, keep: list[bytes]) -> int: ...
    def ensure(
        self,
        path: bytes,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        target: bytes = b"",
        size: int = 0,
        mtime_ns: int = 0,
        xattrs: list[tuple[bytes, bytes]] | None = None,
    ) -> int: ...
    def ensure_link(self, existing: bytes, new: bytes) -> int: ...
    def utimens(self, path: bytes, atime_ns: int | None, mtime_ns: int | None) -> int: ...


@dataclass
class NamespaceStats:
    """What the walk saw."""

    entries: int = 0
    dirs: int = 0
    files: int = 0
    file_bytes: int = 0


def sync_namespace(root_fd: int, target: NamespaceTarget, filter: Filter, pending: Pending) -> NamespaceStats:
    """Walks the replicated tree under `root_fd`, queueing prune/ensure/ensure_link on `target`.

    Blocking and atomic by design: call it with no `await` around it (the FUSE loop waits).
    """
    stats = NamespaceStats()
    by_inode: dict[Key, Item] = {}
    first_names: dict[Key, bytes] = {}
    dirs: list[tuple[bytes, int]] = []
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(b".", dir_fd=root_fd, follow_symlinks=False):
        rel_dir = relative(dirpath)
        kept = replicated_entries(dir_fd, rel_dir, [*dirnames, *filenames], filter)
        target.prune(rel_dir, [name for name, _, _ in kept])
        subdirs = []
        for name, rel, st in kept:
            stats.entries += 1
            first = ensure_entry(target, dir_fd, name, rel, st, first_names)
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(name)
                dirs.append((rel, st.st_mtime_ns))
                stats.dirs += 1
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if first is not None:
                    pending.add_name(by_inode[key], rel)
                    continue
                item = Item(key, [rel], st.st_size, mtime_ns=st.st_mtime_ns)
                by_inode[key] = item
                pending.add(item)
                stats.files += 1
                stats.file_bytes += st.st_size
        dirnames[:] = [name for name in dirnames if name in subdirs]
    # Directory times last, deepest first: creating and removing their entries changed them.
    for rel, mtime_ns in reversed(dirs):
        target.utimens(rel, None, mtime_ns)
    return stats


def replicated_entries(
    dir_fd: int, rel_dir: bytes, names: list[bytes], filter: Filter
) -> list[tuple[bytes, bytes, os.stat_result]]:
    """(name, relative path, lstat) of the replicated entries among `names` of one directory, by name."""
    kept = []
    for name in sorted(names):
        rel = join(rel_dir, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed behind the mirror's back since the listing
        if filter.replicated(rel, is_dir=stat.S_ISDIR(st.st_mode)):
            kept.append((name, rel, st))
    return kept


def ensure_entry(
    target: NamespaceTarget, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result, first_names: dict[Key, bytes]
) -> bytes | None:
    """Queues what makes the secondary's `rel` this entry (`name` in the directory open on `dir_fd`).

    A further name of a hard-linked file whose first name was ensured (recorded in `first_names`)
    becomes an `ensure_link` to it — an `ensure` would give the secondary a private copy again.

    Returns:
        That first name for such a further name, else None.
    """
    if stat.S_ISDIR(st.st_mode):
        _ensure(target, "dir", rel, st, _xattrs(dir_fd, name))
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        first = first_names.get(key) if st.st_nlink > 1 else None
        if first is not None:
            target.ensure_link(first, rel)
            return first
        _ensure(target, "file", rel, st, _xattrs(dir_fd, name))
        if st.st_nlink > 1:
            first_names[key] = rel
    elif stat.S_ISLNK(st.st_mode):
        _ensure(target, "symlink", rel, st, None, link_target=os.readlink(name, dir_fd=dir_fd))
    else:
        _ensure(target, "node", rel, st, _xattrs(dir_fd, name))
    return None


def _ensure(
    target: NamespaceTarget,
    kind: str,
    rel: bytes,
    st: os.stat_result,
    xattrs: list[tuple[bytes, bytes]] | None,
    *,
    link_target: bytes = b"",
) -> None:
    # A device node or FIFO is made from its whole st_mode (type bits included); the rest take permissions.
    mode = st.st_mode if kind == "node" else stat.S_IMODE(st.st_mode)
    target.ensure(
        rel,
        kind,
        mode,
        st.st_uid,
        st.st_gid,
        rdev=st.st_rdev if kind == "node" else 0,
        target=link_target,
        size=st.st_size if kind == "file" else 0,
        mtime_ns=st.st_mtime_ns,
        xattrs=xattrs,
    )


def _xattrs(dir_fd: int, name: bytes) -> list[tuple[bytes, bytes]] | None:
    """The entry's replicated xattrs; None (leave the secondary's alone) where xattrs are not supported."""
    path = b"/proc/self/fd/%d/%s" % (dir_fd, name)
    try:
        names = os.listxattr(path, follow_symlinks=False)
        out = []
        for attr in sorted(names):
            raw = attr.encode()
            if raw.startswith(_XATTR_PREFIXES):
                out.append((raw, os.getxattr(path, attr, follow_symlinks=False)))
        return out
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return None
        raise


def relative(dirpath: bytes) -> bytes:
    """A path of `os.fwalk(b".")` relative to the root (b"" for the root itself)."""
    return b"" if dirpath == b"." else dirpath[2:] if dirpath.startswith(b"./") else dirpath


def join(parent: bytes, name: bytes) -> bytes:
    """`name` inside the relative directory `parent` (b"" is the root)."""
    return name if not parent else parent + b"/" + name
