"""Comparing two directory trees the way a user would: content and metadata, entry by entry."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under `root`: type, mode, owner, size, mtime, content hash or link target, xattrs, hard-link group.

    The mtime (`st_mtime_ns`, of the entry itself for a symlink) is compared for every type, directories included:
    replication carries the primary's modification times exactly. Only the root's own entry is left out.
    """
    entries: dict[str, tuple[object, ...]] = {}
    inodes: dict[str, int] = {}
    names: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                detail: object = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            else:
                detail = None
            xattrs = (
                () if stat.S_ISLNK(st.st_mode) else tuple(sorted((a, os.getxattr(path, a)) for a in os.listxattr(path)))
            )
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            if not stat.S_ISDIR(st.st_mode):
                inodes[rel] = st.st_ino
                names.setdefault(st.st_ino, []).append(rel)
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, st.st_mtime_ns, detail, xattrs)
    # Hard links: every name carries the first (sorted) name of its inode, the same on both nodes.
    return {rel: (*e, min(names[inodes[rel]]) if rel in inodes else None) for rel, e in entries.items()}


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two trees (empty when identical)."""
    left, right = snapshot(a), snapshot(b)
    out = [f"only in primary: {p}" for p in sorted(left.keys() - right.keys())]
    out += [f"only in secondary: {p}" for p in sorted(right.keys() - left.keys())]
    out += [f"differs: {p}: {left[p]} != {right[p]}" for p in sorted(left.keys() & right.keys()) if left[p] != right[p]]
    return out
