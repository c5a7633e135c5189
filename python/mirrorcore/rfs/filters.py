"""What is replicated under a replicated dir: `<notreplicated path|regexpath>` (SPEC §3, §6).

Paths are relative to the replicated root, as bytes, without a leading "/" ("" is the root).

The rule, chosen so that the secondary's tree stays a consistent tree (every replicated entry
has a replicated parent):

1. An entry is *excluded* when it, or any of its ancestors, is excluded: a `path` exclusion
   names an entry and everything below it; a plain `regexpath` is searched (`re.search`) in the
   relative path of the entry and of each of its ancestors, so a regex that matches a directory
   excludes its whole subtree ("in the directory and subdirectories").
2. With one or more `!` regexes ("replicate ONLY matches"), a non-directory that is not excluded
   is replicated only if one of them matches its relative path. Directories that are not
   excluded are always replicated (created, renamed, chmod'ed... on the secondary, possibly
   empty), so that every matching file has its parents there.
3. The root itself is always replicated.

A rename or a hard link between a replicated and a not replicated place is refused with EXDEV
(`crosses_boundary`), so that applications fall back to copy + unlink, which we forward.
For a directory, its descendants count too: moving a directory that holds an excluded entry
to a place where that entry would be replicated (or the reverse) crosses the boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from mirrorcore.config import Replicated

__all__ = ["Filter"]

_CACHE_ENTRIES = 1 << 16


@dataclass(frozen=True)
class _Rules:
    paths: tuple[bytes, ...]
    excludes: tuple[re.Pattern[bytes], ...]
    only: tuple[re.Pattern[bytes], ...]


class Filter:
    """Decides whether a relative path is replicated; see the module docstring for the rule."""

    def __init__(self, paths: Iterable[bytes] = (), excludes: Iterable[str] = (), only: Iterable[str] = ()) -> None:
        self._rules = _Rules(
            tuple(p.strip(b"/") for p in paths),
            tuple(re.compile(r.encode()) for r in excludes),
            tuple(re.compile(r.encode()) for r in only),
        )
        self.everything = not (self._rules.paths or self._rules.excludes or self._rules.only)
        # Called on every operation: memoise per filter (paths repeat a lot: the same file is written often).
        self._excluded = lru_cache(maxsize=_CACHE_ENTRIES)(self._excluded_uncached)

    @classmethod
    def from_config(cls, replicated: Replicated) -> Filter:
        """Builds the filter of one `<replicated>` dir from its `<notreplicated>` entries."""
        paths = [e.pattern.encode() for e in replicated.exclusions if e.kind == "path"]
        excludes = [e.pattern for e in replicated.exclusions if e.kind == "regex" and not e.only]
        only = [e.pattern for e in replicated.exclusions if e.kind == "regex" and e.only]
        return cls(paths, excludes, only)

    @property
    def has_regex(self) -> bool:
        """True when a directory rename needs its descendants checked (see `crosses_boundary`)."""
        return bool(self._rules.excludes or self._rules.only)

    def replicated(self, relpath: bytes, *, is_dir: bool = False) -> bool:
        """Whether operations on `relpath` are forwarded to the secondary.

        Args:
            relpath: path relative to the replicated root, no leading "/" ("" is the root).
            is_dir: the entry is a directory (matters only with `!` regexes, see rule 2).

        Returns:
            True when the entry is replicated.
        """
        if self.everything or not relpath:
            return True
        if self._excluded(relpath):
            return False
        if self._rules.only and not is_dir:
            return any(r.search(relpath) for r in self._rules.only)
        return True

    def crosses_boundary(
        self, old: bytes, new: bytes, *, is_dir: bool = False, descendants: Iterable[bytes] = ()
    ) -> bool:
        """Whether renaming (or linking) `old` to `new` moves something in or out of replication.

        Args:
            old: the entry's current relative path.
            new: its relative path after the operation.
            is_dir: the entry is a directory.
            descendants: for a directory, the paths of the entries below it relative to it
                (b"sub/file"); needed only when `has_regex`, `path` exclusions are checked without.

        Returns:
            True when the operation must fail with EXDEV.
        """
        if self.everything:
            return False
        if self.replicated(old, is_dir=is_dir) != self.replicated(new, is_dir=is_dir):
            return True
        if not is_dir:
            return False
        # A path exclusion strictly below either place: its subtree changes status with the move.
        for p in self._rules.paths:
            for base in (old, new):
                if p.startswith(base + b"/"):
                    rest = p[len(base) + 1 :]
                    other = new if base == old else old
                    if self._excluded(other + b"/" + rest) != self._excluded(base + b"/" + rest):
                        return True
        return any(
            self.replicated(old + b"/" + d) != self.replicated(new + b"/" + d)
            or self.replicated(old + b"/" + d, is_dir=True) != self.replicated(new + b"/" + d, is_dir=True)
            for d in descendants
        )

    def _excluded_uncached(self, relpath: bytes) -> bool:
        rules = self._rules
        for p in rules.paths:
            if relpath == p or relpath.startswith(p + b"/"):
                return True
        if rules.excludes:
            end = len(relpath)
            while end > 0:
                prefix = relpath[:end]
                if any(r.search(prefix) for r in rules.excludes):
                    return True
                end = relpath.rfind(b"/", 0, end)
        return False
