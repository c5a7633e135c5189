"""The files a resync still has to compare, following the names the application gives them meanwhile.

The namespace step lists every regular file with its inode (st_dev, st_ino) and its names; the
content phase then works through the selected ones while the application keeps running. Each
rename, unlink or link the application makes is reported here (`MirrorFS.observer`) right after
it was applied and forwarded, so an item's names stay the primary's current names: its data is
read from, and sent to, the path the secondary knows it by at that point of the stream. A name
that no longer leads to the same inode is not used (the engine checks before each step); an
item with no name left is skipped — an unlinked file is not replicated.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Item", "NamespaceObserver", "Pending", "align", "merge_ranges", "planned_bytes"]

Key = tuple[int, int]  # the primary's (st_dev, st_ino)


@dataclass(eq=False)
class Item:
    """One regular file of the primary, as the namespace step saw it."""

    key: Key
    paths: list[bytes]
    size: int
    mtime_ns: int = 0
    #: Block-aligned (offset, length) ranges to compare; None: the whole file.
    ranges: list[tuple[int, int]] | None = None
    #: The secondary created it empty in the namespace step: copy without comparing.
    created_now: bool = False
    queued: bool = field(default=False, repr=False)

    def widen(self, ranges: list[tuple[int, int]] | None) -> None:
        """Adds `ranges` to what is compared (None: the whole file)."""
        if self.ranges is None or ranges is None:
            self.ranges = None
        else:
            self.ranges = merge_ranges([*self.ranges, *ranges])


class NamespaceObserver:
    """What `MirrorFS` tells about the application's renames, unlinks and links (no-op base)."""

    def renamed(self, old: bytes, new: bytes, *, exchange: bool = False) -> None:
        """`old` was renamed to `new` (with `exchange`, the two names swapped)."""

    def removed(self, path: bytes) -> None:
        """`path` was unlinked or removed (rmdir)."""

    def linked(self, existing: bytes, new: bytes) -> None:
        """`new` is a new hard link to the file named `existing`."""


class Pending(NamespaceObserver):
    """Every file of the namespace step by current name, and the queue of those to compare."""

    def __init__(self) -> None:
        self._by_path: dict[bytes, Item] = {}
        self._by_origin: dict[bytes, Item] = {}  # names at the namespace step (needs come back in those)
        self._queue: deque[Item] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: Item) -> None:
        """Registers a file seen in the namespace step (not queued yet)."""
        for path in item.paths:
            self._by_path[path] = item
            self._by_origin[path] = item

    def add_name(self, item: Item, path: bytes) -> None:
        """Registers a further hard link of a registered file."""
        item.paths.append(path)
        self._by_path[path] = item
        self._by_origin[path] = item

    def registered(self) -> list[Item]:
        """Every file of the namespace step, each once, in walk order."""
        return list(dict.fromkeys(self._by_origin.values()))

    def at_origin(self, path: bytes) -> Item | None:
        """The file that was named `path` in the namespace step."""
        return self._by_origin.get(path)

    def current(self, path: bytes) -> Item | None:
        """The file named `path` now."""
        return self._by_path.get(path)

    def queue(self, item: Item) -> None:
        """Puts a registered file on the list to compare (once)."""
        if not item.queued:
            item.queued = True
            self._queue.append(item)

    def forget_unqueued(self) -> None:
        """Selection done: only queued files need following from now on."""
        self._by_path = {p: i for p, i in self._by_path.items() if i.queued}
        self._by_origin = {}

    def pop(self) -> Item | None:
        """The next file to compare, or None when the queue is empty."""
        return self._queue.popleft() if self._queue else None

    def done(self, item: Item) -> None:
        """The file is compared: stop following its names."""
        for path in item.paths:
            if self._by_path.get(path) is item:
                del self._by_path[path]
        item.paths = []

    @property
    def total_bytes(self) -> int:
        return sum(planned_bytes(i) for i in self._queue)

    # ----- NamespaceObserver ------------------------------------------------------------------

    def renamed(self, old: bytes, new: bytes, *, exchange: bool = False) -> None:
        if not exchange:
            self._drop_name(new)  # the replaced target (a file, or an empty directory) loses its name
        moves = self._under(old, new) + (self._under(new, old) if exchange else [])
        # All old names go first: with an exchange, one side's new names are the other side's old ones.
        for item, src, _ in moves:
            del self._by_path[src]
            item.paths.remove(src)
        for item, _, dst in moves:
            item.paths.append(dst)
            self._by_path[dst] = item

    def removed(self, path: bytes) -> None:
        self._drop_name(path)

    def linked(self, existing: bytes, new: bytes) -> None:
        item = self._by_path.get(existing)
        if item is not None:
            item.paths.append(new)
            self._by_path[new] = item

    def _under(self, src: bytes, dst: bytes) -> list[tuple[Item, bytes, bytes]]:
        """(item, old name, new name) for `src` itself and every name below it."""
        out = []
        prefix = src + b"/"
        for path, item in self._by_path.items():
            if path == src:
                out.append((item, path, dst))
            elif path.startswith(prefix):
                out.append((item, path, dst + path[len(src) :]))
        return out

    def _drop_name(self, path: bytes) -> None:
        item = self._by_path.pop(path, None)
        if item is not None:
            item.paths = [p for p in item.paths if p != path]


def planned_bytes(item: Item) -> int:
    """The bytes an item's comparison covers, as planned (the file may change meanwhile)."""
    if item.ranges is None:
        return item.size
    return sum(min(length, max(0, item.size - off)) for off, length in item.ranges)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping and touching (offset, length) ranges joined."""
    out: list[tuple[int, int]] = []
    for off, length in sorted(ranges):
        if length <= 0:
            continue
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_len, off + length - last_off))
        else:
            out.append((off, length))
    return out


def align(ranges: list[tuple[int, int]], block: int) -> list[tuple[int, int]]:
    """`ranges` widened outward to multiples of `block`, then merged."""
    out = []
    for off, length in ranges:
        start = off - off % block
        end = -(-(off + length) // block) * block
        out.append((start, end - start))
    return merge_ranges(out)
