"""Verify: both copies of one replicated directory compared online, and repaired on request (issue 4).

Runs in the primary's worker while the secondary follows, the application writing all along.
Like the resync (see rfs/blocks.py), every comparison is taken at one point of the replication
stream on both sides, so an application write in flight is never reported as a difference:

- per directory, one trio step lists the primary's entries and queues `request_list` for the
  secondary's, which it answers once it has applied every earlier operation; entries are compared
  by kind, mode, owner, symlink target, and for regular files size and mtime;
- per regular file, per chunk, `blocks.compare_chunk` compares the block checksums.

With repair, a directory's namespace differences are fixed by one step of the resync's own
operations (`prune`, `ensure`, `ensure_link`), its files' differing blocks by `copy_range` of
exactly those blocks (read from the primary at that point), then size and times; each repaired
range is compared again, and the directory listed again, to report what is now equal.

Not compared: hard-link groups (the listing carries no inode numbers), xattrs, directory times.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from mirrorcore.rfs.blocks import BLOCK, CHUNK, LOST, TO_END, Compared, LocalSums, SumsTarget, compare_chunk, send_runs
from mirrorcore.rfs.filters import Filter
from mirrorcore.rfs.linkstate import LinkState
from mirrorcore.rfs.namespace import NamespaceTarget, ensure_entry, join, replicated_entries
from mirrorcore.rfs.pending import Key, merge_ranges
from mirrorcore.rfs.throttle import Throttle

__all__ = ["MAX_REPORTED", "Difference", "Verify", "VerifyTarget", "compare_entry", "run_verify", "verify_command"]

log = logging.getLogger(__name__)

#: At most this many differences are listed in the result (all are counted).
MAX_REPORTED = 200

#: One entry of the secondary's listing: (name, kind, st_mode, uid, gid, size, mtime_ns, symlink target).
Listed = tuple[bytes, str, int, int, int, int, int, bytes]

#: Differences a directory's own repair step fixes; size, mtime and data are fixed per file.
NAMESPACE = ("missing", "extra", "kind", "mode", "owner", "target")


class VerifyTarget(NamespaceTarget, SumsTarget, Protocol):
    """The part of the native Forwarder a verify uses."""

    def truncate(self, path: bytes, size: int) -> int: ...
    def request_list(self, dir: bytes) -> int: ...
    def take_list(self, seq: int, timeout: float | None = None) -> list[Listed]: ...


@dataclass
class Difference:
    """One way `path` differs on the secondary; `ranges` (offset, length) for data."""

    path: bytes
    what: str  # missing | extra | kind | mode | owner | size | mtime | target | data
    ranges: list[tuple[int, int]] = field(default_factory=list)
    repaired: bool = False

    def event(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": os.fsdecode(self.path), "what": self.what, "repaired": self.repaired}
        if self.ranges:
            out["ranges"] = [[offset, length] for offset, length in self.ranges]
        return out


def kind_of(mode: int) -> str:
    """The listing's kind names (as `ensure` takes them)."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "node"


def compare_entry(st: os.stat_result, link_target: bytes, remote: Listed) -> list[str]:
    """How the secondary's entry differs from the primary's (`st`, and its target for a symlink)."""
    _, kind, mode, uid, gid, size, mtime_ns, target = remote
    if kind != kind_of(st.st_mode) or (kind == "node" and stat.S_IFMT(mode) != stat.S_IFMT(st.st_mode)):
        return ["kind"]
    out = []
    if stat.S_IMODE(mode) != stat.S_IMODE(st.st_mode):
        out.append("mode")
    if (uid, gid) != (st.st_uid, st.st_gid):
        out.append("owner")
    if kind == "symlink" and target != link_target:
        out.append("target")
    if kind == "file":
        if size != st.st_size:
            out.append("size")
        if mtime_ns != st.st_mtime_ns:
            out.append("mtime")
    return out


Entries = list[tuple[bytes, bytes, os.stat_result]]


class Verify:
    """One verify of the directory open on `root_fd` against the secondary behind `target`.

    Args:
        root_fd: the replicated directory underneath the mount.
        target: the forwarder (linked, its resync done), or a fake in tests.
        filter: what is replicated (entries outside it are not compared on either side).
        repair: fix what differs, then compare it again.
        throttle: the resync bandwidth limit, which repaired blocks obey.
        local_sums: the primary's block checksums (the native one by default).
    """

    def __init__(
        self,
        root_fd: int,
        target: VerifyTarget,
        filter: Filter,
        *,
        repair: bool = False,
        throttle: Throttle | None = None,
        local_sums: LocalSums | None = None,
        block: int = BLOCK,
        chunk: int = CHUNK,
    ) -> None:
        self.root_fd = root_fd
        self.target = target
        self.filter = filter
        self.repair = repair
        self.throttle = throttle
        self._local_sums = local_sums
        self.block = block
        self.chunk = max(block, chunk - chunk % block)
        self.files_checked = 0
        self.bytes_checked = 0
        self.bytes_sent = 0
        self.differences: list[Difference] = []
        self._first_names: dict[Key, bytes] = {}  # hard links, for a repair's ensure_link

    async def run(self) -> dict[str, Any]:
        """Walks the tree top-down; returns the result fields of the `verify` event.

        Raises:
            ConnectionError, TimeoutError: the link dropped (or the secondary stopped answering).
        """
        started = time.monotonic()
        todo = [b""]
        while todo:
            todo.extend(reversed(await self._directory(todo.pop())))
        total = len(self.differences)
        return {
            "matched": total == 0,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "bytes_sent": self.bytes_sent,
            "differences": [d.event() for d in self.differences[:MAX_REPORTED]],
            "total": total,
            "repaired": self.repair and total > 0,
            # With repair: how many differences a second comparison still found (0: both copies now match).
            "remaining": sum(not d.repaired for d in self.differences) if self.repair else total,
            "seconds": round(time.monotonic() - started, 3),
        }

    # ----- one directory -------------------------------------------------------------------------

    async def _directory(self, rel_dir: bytes) -> list[bytes]:
        """Compares (and repairs) one directory and its files; returns the subdirectories to walk."""
        listed = await self._compare_listing(rel_dir)
        if listed is None:
            return []  # removed by the application since its parent was listed
        local, found = listed
        if found and self.repair:
            repaired = self._repair_namespace(rel_dir, found)
            local = repaired if repaired is not None else local
        unequal: dict[bytes, set[str]] = {}
        for d in found:
            unequal.setdefault(d.path, set()).add(d.what)
        for rel in self._regular(local, unequal):
            found += await self._file(rel, rel in unequal)
        self.differences += found
        if self.repair and found:
            # The directory as the secondary has it now (one more step), for what the repair fixed.
            after = await self._compare_listing(rel_dir)
            still = {(d.path, d.what) for d in after[1]} if after is not None else set()
            for d in found:
                if d.what != "data":
                    d.repaired = (d.path, d.what) not in still
        gone = {d.path for d in found if d.what in ("missing", "kind")} if not self.repair else set()
        return [rel for _, rel, st in local if stat.S_ISDIR(st.st_mode) and rel not in gone]

    def _regular(self, local: Entries, unequal: dict[bytes, set[str]]) -> list[bytes]:
        """The regular files whose data is compared: those the secondary has as regular files (or got now)."""
        absent = {"missing", "kind"}
        return [
            rel
            for _, rel, st in local
            if stat.S_ISREG(st.st_mode) and (self.repair or not absent & unequal.get(rel, set()))
        ]

    async def _compare_listing(self, rel_dir: bytes) -> tuple[Entries, list[Difference]] | None:
        """One step lists both sides at one stream point; returns the primary's entries and the differences."""
        local = self._list_local(rel_dir)
        if local is None:
            return None
        seq = self.target.request_list(rel_dir)
        remote = await trio.to_thread.run_sync(self.target.take_list, seq, abandon_on_cancel=True)
        theirs = {r[0]: r for r in remote if self.filter.replicated(join(rel_dir, r[0]), is_dir=r[1] == "dir")}
        found = []
        for name, rel, st, link_target in local:
            other = theirs.pop(name, None)
            if other is None:
                found.append(Difference(rel, "missing"))
            else:
                found += [Difference(rel, what) for what in compare_entry(st, link_target, other)]
        found += [Difference(join(rel_dir, name), "extra") for name in theirs]
        found.sort(key=lambda d: d.path)
        return [(name, rel, st) for name, rel, st, _ in local], found

    def _list_local(self, rel_dir: bytes) -> list[tuple[bytes, bytes, os.stat_result, bytes]] | None:
        """The primary's replicated entries of `rel_dir` with each symlink's target (no await: one step)."""
        try:
            fd = os.open(rel_dir or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.root_fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            out = []
            for name, rel, st in replicated_entries(fd, rel_dir, _names(fd), self.filter):
                target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else b""
                out.append((name, rel, st, target))
            return out
        finally:
            os.close(fd)

    def _repair_namespace(self, rel_dir: bytes, found: list[Difference]) -> Entries | None:
        """One step: the directory's extra entries pruned, its differing entries ensured, its mtime set.

        Returns the primary's entries as the step saw them (None: the directory is gone).
        """
        fix = {d.path for d in found if d.what in NAMESPACE}
        try:
            fd = os.open(rel_dir or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.root_fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            local = replicated_entries(fd, rel_dir, _names(fd), self.filter)
            extra = any(d.what == "extra" for d in found)
            if extra:
                self.target.prune(rel_dir, [name for name, _, _ in local])
            for name, rel, st in local:
                if rel in fix:
                    ensure_entry(self.target, fd, name, rel, st, self._first_names)
            if (fix or extra) and rel_dir:
                # Creating and removing entries changed the secondary's directory time (the root's is not kept).
                self.target.utimens(rel_dir, None, os.fstat(fd).st_mtime_ns)
            return local
        finally:
            os.close(fd)

    # ----- one file ------------------------------------------------------------------------------

    async def _file(self, rel: bytes, listed_unequal: bool) -> list[Difference]:
        """Compares a file's blocks (repairing the runs that differ); returns its data difference, if any.

        `listed_unequal`: its listing differed (size, times…): a repair sets its size and times too.
        """
        runs, sizes_differ = await self._compare_blocks(rel, [(0, TO_END)], send=self.repair)
        if runs is None:
            return []  # no longer a regular file on the primary: nothing to compare
        self.files_checked += 1
        found = [Difference(rel, "data", runs)] if runs else []
        if self.repair and (runs or sizes_differ or listed_unequal):
            self._finish(rel)
            if runs:
                again, _ = await self._compare_blocks(rel, runs, send=False, count=False)
                found[0].repaired = again == []
        return found

    async def _compare_blocks(
        self, rel: bytes, ranges: list[tuple[int, int]], *, send: bool, count: bool = True
    ) -> tuple[list[tuple[int, int]] | None, bool]:
        """The runs of `ranges` that differ (None: not a regular file on the primary), and whether sizes differ."""
        runs: list[tuple[int, int]] = []
        sizes_differ = False
        for offset, length in ranges:
            pos, end = offset, offset + length
            while pos < end:
                n = min(self.chunk, end - pos)
                compared = await self._compare_chunk(rel, pos, n)
                if compared is None:
                    return None, False
                if compared.remote_size is None:
                    break  # beyond the primary's end
                sizes_differ = compared.remote_size != compared.size
                if count:
                    self.bytes_checked += min(n, compared.size - pos)
                if compared.runs:
                    runs += compared.runs
                    if send:
                        await self._send(rel, compared.runs)
                pos += n
                if pos >= compared.size:
                    break
        return merge_ranges(runs), sizes_differ

    async def _compare_chunk(self, rel: bytes, pos: int, n: int) -> Compared | None:
        return await compare_chunk(self.root_fd, self.target, rel, pos, n, self.block, self._local_sums)

    async def _send(self, rel: bytes, runs: list[tuple[int, int]]) -> None:
        if self.throttle is not None:
            await self.throttle.take(sum(length for _, length in runs))
        # One step: the blocks as the primary has them now, to the secondary's file at that same point.
        try:
            self.bytes_sent += send_runs(self.root_fd, self.target, rel, runs)
        except FileNotFoundError:
            pass  # removed meanwhile (and the removal forwarded): nothing left to repair
        except OSError as exc:
            log.warning("cannot repair %r: %s", rel, exc)

    def _finish(self, rel: bytes) -> None:
        """One step: the secondary's file gets the primary's current size and times."""
        try:
            st = os.stat(rel, dir_fd=self.root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode):
            self.target.truncate(rel, st.st_size)
            self.target.utimens(rel, st.st_atime_ns, st.st_mtime_ns)


async def run_verify(verify: Verify) -> dict[str, Any]:
    """`verify.run()`, a lost link turned into an `error` result."""
    try:
        return await verify.run()
    except LOST as exc:
        return {"matched": False, "error": f"the link to the secondary dropped during the verify: {exc}"}


async def verify_command(
    root_fd: int, filter: Filter, link: LinkState, throttle: Throttle, repair: bool, emit: Callable[..., None]
) -> None:
    """Runs one verify (the worker's `{"cmd": "verify"}`) and emits its result (`emit(**fields)`).

    Refused, with the reason in `error`, while no secondary follows, a resync runs, or another verify runs.
    """
    started = time.monotonic()
    forwarder = link.forwarder
    if link.resyncing:
        error = "a resync is running: verify once the secondary is in sync"
    elif forwarder is None or not forwarder.connected:
        error = "no secondary is linked: there is no copy to compare with"
    elif link.verifying:
        error = "a verify is already running"
    else:
        error = ""
    if error:
        emit(repair=repair, matched=False, error=error, seconds=0.0)
        return
    assert forwarder is not None
    link.verifying = True
    try:
        result = await run_verify(Verify(root_fd, forwarder, filter, repair=repair, throttle=throttle))
    except Exception as exc:
        log.exception("verify failed")
        result = {"matched": False, "error": f"the verify failed: {type(exc).__name__}: {exc}"}
    finally:
        link.verifying = False
    result.setdefault("seconds", round(time.monotonic() - started, 3))
    emit(repair=repair, **result)


def _names(dir_fd: int) -> list[bytes]:
    # os.listdir of an fd gives str names; back to the bytes the tree holds.
    return [os.fsencode(name) for name in os.listdir(dir_fd)]
