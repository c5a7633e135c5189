"""Split-brain salvage: what a node wrote while it ran alone is kept before a resync replaces it.

After a split brain both nodes ran the application. When heartbeats return, one of them
(the loser) becomes secondary and its copy is brought back to the winner's: without
salvage, everything the loser wrote during the split would be silently overwritten. The
product does exactly that; we first save every file the loser changed, and list what it
deleted or renamed, under `<lib>/<module>/salvage/<UTC time>/`, with a report (SPEC §4).

What changed comes from the loser's tracking map when it has one (it recorded every
operation the secondary had not confirmed, so the split's operations are all in it), else
from modification times since the last moment both copies were known identical — which
misses deletions, so the report says which source was used.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirrorcore import _native

__all__ = ["Changes", "Salvage", "changes_from_map", "changes_since", "list_salvages", "salvage"]

REPORT_JSON = "report.json"
REPORT_TXT = "REPORT.txt"

#: Kinds of changelog records that take a name away from the tree (the old name, for a rename).
_REMOVING = ("unlink", "rmdir")


@dataclass(frozen=True)
class Changes:
    """What one replicated directory's copy changed during the split (paths relative to it)."""

    source: str  # how it was found: a sentence for the report
    changed: tuple[bytes, ...] = ()  # written, created, chmod'ed… (saved if still there)
    removed: tuple[bytes, ...] = ()  # unlinked or removed directories (listed)
    renamed: tuple[tuple[bytes, bytes], ...] = ()  # (old, new) (listed; the new name is saved)


@dataclass
class _DirReport:
    dir: str
    source: str
    saved: list[str] = field(default_factory=list)
    bytes: int = 0
    gone: list[str] = field(default_factory=list)  # changed, but no longer there to save
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Salvage:
    """One salvage folder, as `mirrorctl splitbrain list` shows it."""

    path: Path
    at: str
    reason: str
    files: int
    bytes: int
    removed: int


def changes_from_map(dirty: _native.DirtyMap) -> Changes:
    """The changes a tracking map recorded: every path with dirty zones, and the namespace changelog."""
    changed: list[bytes] = list(dirty.paths())
    removed: list[bytes] = []
    renamed: list[tuple[bytes, bytes]] = []
    for _seq, kind, path, path2 in dirty.changelog():
        if kind in _REMOVING:
            removed.append(path)
        elif kind == "rename" and path2 is not None:
            renamed.append((path, path2))
            changed.append(path2)
        elif kind == "exchange" and path2 is not None:
            changed += [path, path2]  # each name now holds the other's entry
        elif kind == "link" and path2 is not None:
            changed.append(path2)
        else:
            changed.append(path)
    return Changes(
        "the node's tracking map (every operation it recorded)", _unique(changed), tuple(removed), tuple(renamed)
    )


def changes_since(root: Path, since: float) -> Changes:
    """Every entry under `root` modified (content or inode) at or after `since` (a scan; no deletions)."""
    changed: list[bytes] = []
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if max(st.st_mtime, st.st_ctime) >= since:
                changed.append(os.path.relpath(full, root_b))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return Changes(f"modification times since {when} (no tracking map: deletions are not known)", tuple(changed))


def salvage(base: Path, dirs: Sequence[tuple[Path, Changes]], reason: str, *, now: float | None = None) -> Path | None:
    """Saves the changed files of each `(replicated dir, changes)` under `base/<UTC time>/`.

    Files keep their path below a folder named after the replicated directory
    (`/srv/demo/a/b` → `<folder>/srv/demo/a/b`), with their modes and times; symlinks are saved as
    symlinks. Returns the folder, or None when nothing changed (no folder is made).

    Raises:
        OSError: the salvage folder cannot be written (a full disk…): the caller must not resync.
    """
    if not any(c.changed or c.removed or c.renamed for _d, c in dirs):
        return None
    when = time.time() if now is None else now
    folder = _new_folder(base, when)
    reports = [_save_dir(folder, d, c) for d, c in dirs]
    _write_reports(folder, reason, when, reports)
    return folder


def list_salvages(base: Path) -> list[Salvage]:
    """The salvage folders under `base`, oldest first (a folder without a readable report is still listed)."""
    if not base.is_dir():
        return []
    found: list[Salvage] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            report = json.loads((folder / REPORT_JSON).read_text())
            dirs = report["dirs"]
            found.append(
                Salvage(
                    folder,
                    report["at"],
                    report["reason"],
                    sum(len(d["saved"]) for d in dirs),
                    sum(d["bytes"] for d in dirs),
                    sum(len(d["removed"]) for d in dirs),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            found.append(Salvage(folder, folder.name, f"unreadable {REPORT_JSON}: look inside the folder", 0, 0, 0))
    return found


def _unique(paths: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(paths))


def _new_folder(base: Path, when: float) -> Path:
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime(when))
    for n in range(1000):
        folder = base / (stamp if n == 0 else f"{stamp}.{n}")
        try:
            folder.mkdir(parents=True, mode=0o700)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot make a new salvage folder under {base}: {stamp}.* all exist")


def _save_dir(folder: Path, root: Path, changes: Changes) -> _DirReport:
    report = _DirReport(str(root), changes.source)
    dest_root = folder / str(root).lstrip("/")
    dest_root.mkdir(parents=True, exist_ok=True)
    for rel in changes.changed:
        name = os.fsdecode(rel)
        src = root / name
        if not (_real_dirs_below(root, src) and _real_dirs_below(dest_root, dest_root / name)):
            # A parent was replaced by a symlink (or a file) during the split: following it could read
            # outside the replicated tree. Listed, not saved.
            report.gone.append(f"{name} (a parent directory is no longer a directory)")
            continue
        try:
            st = src.lstat()
        except FileNotFoundError:
            report.gone.append(name)
            continue
        if stat.S_ISDIR(st.st_mode):
            continue  # a directory's own change (mode, times) holds no data; its files are listed themselves
        dest = dest_root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISLNK(st.st_mode):
            dest.unlink(missing_ok=True)
            dest.symlink_to(os.readlink(src))
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(src, dest, follow_symlinks=False)
            report.bytes += st.st_size
        else:
            continue  # device nodes, FIFOs: nothing to keep
        report.saved.append(name)
    report.removed = [os.fsdecode(p) for p in changes.removed]
    report.renamed = [(os.fsdecode(a), os.fsdecode(b)) for a, b in changes.renamed]
    return report


def _real_dirs_below(root: Path, path: Path) -> bool:
    """Every component between `root` and `path` (excluded) is a real directory, or does not exist yet."""
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = current / part
        try:
            if not stat.S_ISDIR(current.lstat().st_mode):
                return False
        except FileNotFoundError:
            return True
    return True


def _write_reports(folder: Path, reason: str, when: float, reports: list[_DirReport]) -> None:
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    data = {"at": at, "reason": reason, "dirs": [vars(r) for r in reports]}
    # Names need not be UTF-8: JSON escapes them, the text report keeps their bytes.
    (folder / REPORT_JSON).write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        f"Split-brain salvage of {at}",
        f"Why: {reason}",
        "The files below were changed on this node while it ran the application without its peer; the",
        "resync that followed replaced them with the other node's copy. They are saved here, below the",
        "path of their replicated directory. Merge what you need back through the primary's mount.",
        "",
    ]
    for r in reports:
        lines += [f"== {r.dir} (found from {r.source})", f"saved: {len(r.saved)} files, {r.bytes} bytes"]
        lines += [f"  saved    {p}" for p in r.saved]
        lines += [f"  gone     {p} (changed, then removed before the salvage)" for p in r.gone]
        lines += [f"  removed  {p}" for p in r.removed]
        lines += [f"  renamed  {a} -> {b}" for a, b in r.renamed]
        lines.append("")
    (folder / REPORT_TXT).write_text("\n".join(lines), errors="surrogateescape")
    # The resync replaces the originals right after: the saved files and reports must be on disk first.
    os.sync()
