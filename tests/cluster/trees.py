"""Comparing two directory trees the way a user would: content and metadata, entry by entry."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import time
from pathlib import Path

from mirrorcore.lab import Lab


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


def wait_identical(lab: Lab, dir: str = "/srv/demo", timeout: float = 20) -> list[str]:
    """Polls until node2's copy of `dir` equals node1's (semi-sync applies shortly after acknowledging)."""
    deadline = time.monotonic() + timeout
    while True:
        diff = differences(lab.host_path("node1", dir), lab.host_path("node2", dir))
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.2)


def make_tree(root: Path, files: int, seed: int, *, big: int = 4) -> int:
    """Writes `files` files (1 B to 48 KiB) in nested directories under `root`, plus `big` files of 5 MiB.

    Returns the bytes written. Written straight to disk, not through a mount: the data a node holds
    before the module starts.
    """
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        sub = root / f"d{i % 17}" / f"e{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randrange(1, 48 << 10))
        (sub / f"f{i}").write_bytes(data)
        total += len(data)
    for i in range(big):
        data = rng.randbytes(5 << 20)
        (root / f"big{i}").write_bytes(data)
        total += len(data)
    (root / "link").symlink_to("big0")
    return total
