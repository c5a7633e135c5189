"""Block checksums of one file compared on both nodes at one point of the replication stream.

Shared by the resync (rfs/resync.py) and verify (rfs/verify.py). `compare_chunk` computes the
primary's checksums and queues the request for the secondary's in one trio step (no `await`
between them, so no application operation falls between them: the FUSE handlers run in this
same trio thread); the secondary answers once it has applied every earlier operation. Blocks
whose checksums match are equal on both sides at that point, and every later write is forwarded
to both. `send_runs` then queues the blocks that differ, read from the primary's file as it is
when they are queued — never older than what the application wrote before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from mirrorcore import _native

__all__ = [
    "BLOCK",
    "CHUNK",
    "LOST",
    "SUM",
    "TO_END",
    "Compared",
    "LocalSums",
    "SumsTarget",
    "compare_chunk",
    "differing_runs",
    "send_runs",
]

#: Bytes per checksummed block (the native `local_sums` / `request_sums` unit).
BLOCK = 64 << 10
#: Bytes compared per step: the application waits for one chunk's checksums at most.
CHUNK = 4 << 20
#: Bytes per block checksum.
SUM = 16
#: A range "to the end of the file".
TO_END = 1 << 62

#: What a lost link (or a secondary that stopped answering) raises.
LOST = (ConnectionError, TimeoutError)

log = logging.getLogger(__name__)

LocalSums = Callable[[int, bytes, int, int, int], tuple[int, bytes]]


class SumsTarget(Protocol):
    """The part of the native Forwarder that compares and copies blocks."""

    def request_sums(self, path: bytes, offset: int, length: int, block: int) -> int: ...
    def take_sums(self, seq: int, timeout: float | None = None) -> tuple[int, bytes]: ...
    def copy_range(self, root_fd: int, path: bytes, offset: int, length: int) -> int: ...


@dataclass(frozen=True)
class Compared:
    """One chunk compared: the primary's size, the secondary's, and the runs of blocks that differ."""

    size: int
    #: The secondary's size; -1 when it has no regular file there (or could not read it); None when
    #: the chunk lies beyond the primary's end (nothing was asked).
    remote_size: int | None
    runs: list[tuple[int, int]]


async def compare_chunk(
    root_fd: int, target: SumsTarget, path: bytes, pos: int, n: int, block: int, local_sums: LocalSums | None = None
) -> Compared | None:
    """Compares [pos, pos + n) of `path` on both nodes at one stream point.

    Everything up to the request runs in the caller's trio step (call it right after whatever
    located `path`). Returns None when `path` is no regular file on the primary.

    Raises:
        ConnectionError, TimeoutError: the link dropped before the answer came.
    """
    size, local = (local_sums or _native.local_sums)(root_fd, path, pos, n, block)
    if size < 0:
        return None
    if pos >= size:
        return Compared(size, None, [])
    seq = target.request_sums(path, pos, n, block)
    try:
        remote_size, remote = await trio.to_thread.run_sync(target.take_sums, seq, abandon_on_cancel=True)
    except LOST:
        raise
    except OSError as exc:
        # The secondary could not read its copy there: every block differs.
        log.warning("no checksums from the secondary for %r at %d: %s; its blocks count as different", path, pos, exc)
        remote_size, remote = -1, b""
    return Compared(size, remote_size, differing_runs(local, remote, pos, block, size))


def send_runs(root_fd: int, target: SumsTarget, path: bytes, runs: list[tuple[int, int]]) -> int:
    """Queues the primary's current bytes of `runs` (one step); returns the bytes queued."""
    return sum(target.copy_range(root_fd, path, offset, length) for offset, length in runs)


def differing_runs(local: bytes, remote: bytes, offset: int, block: int, size: int) -> list[tuple[int, int]]:
    """The (offset, length) runs of blocks whose checksums differ, clipped at the primary's `size`.

    `local` and `remote` are concatenated 16-byte checksums of the blocks from `offset`; a block
    the secondary does not have (its file is shorter) differs.
    """
    runs: list[tuple[int, int]] = []
    for i in range(len(local) // SUM):
        at = i * SUM
        if local[at : at + SUM] == remote[at : at + SUM]:
            continue
        start = offset + i * block
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + block)
        else:
            runs.append((start, block))
    if runs:
        last_off, last_len = runs[-1]
        runs[-1] = (last_off, max(0, min(last_len, size - last_off)))
        if runs[-1][1] == 0:
            runs.pop()
    return runs
