"""Online, checksummed resynchronization of one replicated directory (SPEC §7).

The secondary catches up while the application keeps writing through the mount. Resync data
travels in the same ordered stream as the application's operations, and every comparison is
taken at one point of that stream on both sides:

1. **Namespace step** — one trio step with no `await`, so no application operation falls inside
   it (the FUSE handlers run in this same trio thread): the mode's zones are read from the
   tracking map, the forwarder is attached to the FUSE layer and the map (`attach`), the tree's
   metadata is walked (`namespace.sync_namespace`: prune, ensure, ensure_link, directory times),
   the files to compare are selected and a `Needs` request is queued. From then on every
   application operation is forwarded after it, and its renames/unlinks/links are followed
   (`pending.Pending`, told by `MirrorFS.observer`).
2. **Needs** — the secondary answers with the files whose quick check (size, mtime) failed, and
   those it had to create; they join the selection.
3. **Content** — `nbrei` workers take one file at a time; per chunk, one step computes the
   primary's block checksums and queues `request_sums` (both at one stream point); the reply is
   awaited in a thread; then one step queues `copy_range` for the blocks that differ, read from
   the primary's file as it is at that point — never older than what the application wrote
   before. A file's last step sets its size (when the sizes differed) and its times.

Modes (chosen by `copyids.choose_mode`): *full* compares every regular file; *timestamp* the
files modified since the last sync; *zones* the tracking map's zones (whole file from a recorded
truncation on, whole files named by its `link` records). Every mode adds the secondary's needs.
Blocks that already match are never sent. The completion mark is queued by the caller
(primary.py), which owns the copy-id records and the tracking map.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from typing import Any, Protocol

import trio

from mirrorcore import _native
from mirrorcore.rfs.blocks import BLOCK, CHUNK, LOST, TO_END, LocalSums, SumsTarget, compare_chunk, send_runs
from mirrorcore.rfs.copyids import ModeChoice
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.namespace import NamespaceTarget, sync_namespace
from mirrorcore.rfs.pending import Item, NamespaceObserver, Pending, align
from mirrorcore.rfs.progress import Progress
from mirrorcore.rfs.throttle import Throttle

__all__ = ["Resync", "ResyncTarget", "zones_plan"]

log = logging.getLogger(__name__)

ZonesPlan = dict[bytes, list[tuple[int, int]] | None]


class ResyncTarget(NamespaceTarget, SumsTarget, Protocol):
    """The part of the native Forwarder a resync uses (see .contracts/resync.md)."""

    def truncate(self, path: bytes, size: int) -> int: ...
    def request_needs(self) -> int: ...
    def take_needs(self, seq: int, timeout: float | None = None) -> list[tuple[bool, bytes]]: ...


class ZonesSource(Protocol):
    """The part of `_native.DirtyMap` the zones mode reads."""

    def paths(self) -> list[bytes]: ...
    def zones(self, path: bytes) -> list[tuple[int, int]]: ...
    def truncate_to(self, path: bytes) -> int | None: ...
    def changelog(self) -> list[tuple[int, str, bytes, bytes | None]]: ...


def zones_plan(dirty: ZonesSource, block: int = BLOCK) -> ZonesPlan:
    """What the zones mode compares, per path: block-aligned ranges, or None for the whole file.

    A recorded truncation to `t` makes everything from `t` on suspect (the file may have been
    cut and extended with zeros the zones do not show). Zones are kept per name, so the names a
    `link` record joins are compared whole (the map's known limit, see rust/src/dirty.rs).
    """
    plan: ZonesPlan = {}
    for path in dirty.paths():
        ranges = list(dirty.zones(path))
        cut = dirty.truncate_to(path)
        if cut is not None:
            ranges.append((cut, TO_END - cut))
        plan[path] = align(ranges, block)
    for _, kind, path, path2 in dirty.changelog():
        if kind == "link":
            for name in (path, path2):
                if name is not None:
                    plan[name] = None
    return plan


class Resync:
    """One resync over a forwarder whose link just came up.

    Args:
        root_fd: the replicated directory underneath the mount.
        target: the forwarder (or a fake in tests).
        filter: what is replicated.
        choice: the mode and its reason.
        attach: called inside the namespace step, before the walk: attaches `target` to the FUSE
            layer and to the tracking map (so every later operation is forwarded and recorded).
        observe: sets (then clears, with None) the FUSE layer's namespace observer.
        zones: reads the tracking map's zones (zones mode), inside the namespace step.
        throttle: the resync bandwidth limit, pause and boost.
        emit: receives each progress snapshot (at most twice a second, and at each phase change).
        workers: how many files are compared at once (`nbrei`).
        local_sums: the primary's block checksums (the native one by default).
    """

    def __init__(
        self,
        root_fd: int,
        target: ResyncTarget,
        filter: Filter,
        choice: ModeChoice,
        *,
        attach: Callable[[], None],
        observe: Callable[[NamespaceObserver | None], None],
        zones: Callable[[], ZonesPlan] | None,
        throttle: Throttle,
        emit: Callable[[dict[str, Any]], None],
        workers: int = 1,
        local_sums: LocalSums | None = None,
        block: int = BLOCK,
        chunk: int = CHUNK,
    ) -> None:
        self.root_fd = root_fd
        self.target = target
        self.filter = filter
        self.choice = choice
        self._attach = attach
        self._observe = observe
        self._zones = zones
        self.throttle = throttle
        self._emit = emit
        self.workers = max(1, workers)
        self._local_sums: LocalSums = local_sums or _native.local_sums
        self.block = block
        self.chunk = max(block, chunk - chunk % block)
        self.pending = Pending()
        self.progress = Progress(choice.mode, choice.reason, trio.current_time())
        self._failure: BaseException | None = None

    async def run(self) -> Progress:
        """Namespace step, needs, content; returns the progress counters at the end.

        Raises:
            ConnectionError: the link dropped (or the secondary stopped answering) meanwhile.
        """
        try:
            needs_seq = self._namespace_step()
            self._report(force=True)
            needs = await trio.to_thread.run_sync(self.target.take_needs, needs_seq, abandon_on_cancel=True)
            self._add_needs(needs)
            self.progress.files_total = len(self.pending)
            self.progress.bytes_total = self.pending.total_bytes
            self.progress.begin_content(trio.current_time())
            self._report(force=True)
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._work, nursery.cancel_scope)
            if self._failure is not None:
                raise ConnectionError(f"the link dropped during the resync: {self._failure}") from self._failure
        except BaseException:
            self.progress.end(trio.current_time(), "interrupted")
            self._report(force=True)
            raise
        finally:
            self._observe(None)
        self.progress.end(trio.current_time())
        self._report(force=True)
        return self.progress

    # ----- namespace step (no await) -------------------------------------------------------------

    def _namespace_step(self) -> int:
        plan = self._zones() if self.choice.mode == "zones" and self._zones is not None else {}
        self._attach()
        self._observe(self.pending)
        stats = sync_namespace(self.root_fd, self.target, self.filter, self.pending)
        self.progress.entries = stats.entries
        self._select(plan)
        return self.target.request_needs()

    def _select(self, plan: ZonesPlan) -> None:
        mode = self.choice.mode
        if mode == "full":
            for item in self.pending.registered():
                self._queue(item, None)
        elif mode == "timestamp":
            since_ns = int((self.choice.since or 0.0) * 1e9)
            for item in self.pending.registered():
                if item.mtime_ns >= since_ns:
                    self._queue(item, None)
        elif mode == "zones":
            for path, ranges in plan.items():
                named = self.pending.current(path)
                if named is not None:
                    self._queue(named, ranges)

    def _add_needs(self, needs: list[tuple[bool, bytes]]) -> None:
        for created_now, path in needs:
            item = self.pending.at_origin(path)
            if item is None:
                continue
            if item.queued and self.choice.mode == "zones" and not created_now and not self.choice.peer_diverged:
                # The trusted map's zones hold every change; size and times are set at the end. (A
                # secondary that wrote on its own names files whose changes may lie outside them.)
                continue
            item.created_now = item.created_now or created_now
            self._queue(item, None)
        self.pending.forget_unqueued()

    def _queue(self, item: Item, ranges: list[tuple[int, int]] | None) -> None:
        if item.queued:
            item.widen(ranges)
        else:
            item.ranges = ranges
        self.pending.queue(item)

    # ----- content phase -------------------------------------------------------------------------

    async def _work(self, scope: trio.CancelScope) -> None:
        while (item := self.pending.pop()) is not None:
            try:
                await self._compare(item)
            except LOST as exc:
                self._failure = exc
                scope.cancel()
                return
            self.pending.done(item)
            self.progress.files_done += 1
            self._report()

    async def _compare(self, item: Item) -> None:
        sizes_differ = True  # until a comparison says otherwise: set the size at the end
        for offset, length in item.ranges if item.ranges is not None else [(0, TO_END)]:
            pos, end = offset, offset + length
            while pos < end:
                n = min(self.chunk, end - pos)
                step = await (self._copy_chunk(item, pos, n) if item.created_now else self._compare_chunk(item, pos, n))
                if step is None:
                    return  # the file is gone (or no longer this file): nothing left to send
                size, differ = step
                if differ is not None:
                    sizes_differ = differ
                if pos + n >= size:
                    break
                pos += n
        self._finish(item, sizes_differ or item.created_now)

    async def _compare_chunk(self, item: Item, pos: int, n: int) -> tuple[int, bool | None] | None:
        await self.throttle.wait_running()
        # One step: the primary's checksums and the request for the secondary's, at one stream point.
        found = self._locate(item)
        if found is None:
            return None
        compared = await compare_chunk(self.root_fd, self.target, found[0], pos, n, self.block, self._local_sums)
        if compared is None:
            return None
        size = compared.size
        if compared.remote_size is None:
            return size, None
        if compared.runs:
            await self.throttle.take(sum(length for _, length in compared.runs))
            # One step: the differing blocks as the primary has them now.
            found = self._locate(item)
            if found is None:
                return None
            self.progress.bytes_sent += send_runs(self.root_fd, self.target, found[0], compared.runs)
        self.progress.bytes_done += min(n, size - pos)
        self._report()
        return size, compared.remote_size != size

    async def _copy_chunk(self, item: Item, pos: int, n: int) -> tuple[int, bool | None] | None:
        """A file the secondary has just created empty: its data is sent without comparing."""
        found = self._locate(item)
        if found is None:
            return None
        size = found[1].st_size
        if pos >= size:
            return size, None
        n = min(n, size - pos)
        await self.throttle.take(n)
        found = self._locate(item)
        if found is None:
            return None
        self.progress.bytes_sent += self.target.copy_range(self.root_fd, found[0], pos, n)
        self.progress.bytes_done += n
        self._report()
        return found[1].st_size, None

    def _finish(self, item: Item, set_size: bool) -> None:
        found = self._locate(item)
        if found is None:
            return
        path, st = found
        if set_size:
            self.target.truncate(path, st.st_size)
        self.target.utimens(path, st.st_atime_ns, st.st_mtime_ns)

    def _locate(self, item: Item) -> tuple[bytes, os.stat_result] | None:
        """The item's current name that still leads to its inode, with that file's stat."""
        for path in item.paths:
            try:
                st = os.stat(path, dir_fd=self.root_fd, follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == item.key and stat.S_ISREG(st.st_mode):
                return path, st
        return None

    def _report(self, *, force: bool = False) -> None:
        self.progress.state = self.throttle.state
        self.progress.maybe_report(trio.current_time(), self._emit, force=force)
